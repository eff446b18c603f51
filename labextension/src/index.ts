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
import { ClusterPanel } from './widget';

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

export default plugin;
