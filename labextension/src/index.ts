/**
 * jupyter-raykube: the "Ray clusters" sidebar. This file only wires the pieces together:
 * api.ts (REST) -> model.ts (Poll + state) -> widget.tsx (view), commands.ts (shell actions).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { RayKubeAPI } from './api';
import { addCommands } from './commands';
import { ClusterListModel } from './model';
import { ClusterPanel, DEFAULT_FORM, IFormDefaults } from './widget';

const PLUGIN_ID = 'jupyter-raykube:plugin';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A sidebar to start, watch, scale and stop your Ray clusters.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, INotebookTracker, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const model = new ClusterListModel(new RayKubeAPI(app.serviceManager.serverSettings));
    const panel = new ClusterPanel(model, app.commands);
    app.shell.add(panel, 'left', { rank: 750 });
    restorer?.add(panel, panel.id);
    addCommands({ app, model, panel, notebooks, palette });

    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings) => {
        model.interval = settings.get('pollInterval').composite as number;
        panel.defaults = formDefaults(settings);
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.error('jupyter-raykube: cannot load settings', reason));
    }
  }
};

function formDefaults(settings: ISettingRegistry.ISettings): IFormDefaults {
  const get = (key: string) => settings.get(key).composite;
  return {
    cpuMin: (get('defaultCpuMin') as number) ?? DEFAULT_FORM.cpuMin,
    cpuMax: (get('defaultCpuMax') as number) ?? DEFAULT_FORM.cpuMax,
    workerCpus: (get('defaultWorkerCpus') as number) ?? DEFAULT_FORM.workerCpus,
    gpuMin: (get('defaultGpuMin') as number) ?? DEFAULT_FORM.gpuMin,
    gpuMax: (get('defaultGpuMax') as number) ?? DEFAULT_FORM.gpuMax,
    idleTimeout: (get('defaultIdleTimeout') as number | null) ?? DEFAULT_FORM.idleTimeout
  };
}

export default plugin;
