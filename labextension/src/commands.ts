/**
 * Commands: the sidebar's view and the command palette both act through these.
 * Shell work lives here (opening the dashboard tab, editing the active notebook);
 * REST work lives in the model.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { refreshIcon } from '@jupyterlab/ui-components';

import { DashboardView } from './dashboard';
import { rayIcon } from './icon';
import type { ClusterListModel } from './model';
import type { ClusterPanel } from './widget';

export namespace CommandIDs {
  export const openSidebar = 'raykube:open-sidebar';
  export const newCluster = 'raykube:new-cluster';
  export const refresh = 'raykube:refresh';
  export const openDashboard = 'raykube:open-dashboard';
  export const insertConnectCode = 'raykube:insert-connect-code';
}

const PALETTE_CATEGORY = 'Ray';

/** The code that connects a notebook's kernel to a cluster. */
export function connectCode(name: string): string {
  return `%load_ext jupyter_raykube\n%raycluster attach ${name}`;
}

export interface ICommandContext {
  app: JupyterFrontEnd;
  model: ClusterListModel;
  panel: ClusterPanel;
  notebooks: INotebookTracker | null;
  palette: ICommandPalette | null;
}

export function addCommands(context: ICommandContext): void {
  const { app, model, panel, notebooks, palette } = context;
  const { commands, shell } = app;
  const dashboards = new WidgetTracker<MainAreaWidget<DashboardView>>({
    namespace: 'raykube-dashboard'
  });

  commands.addCommand(CommandIDs.openSidebar, {
    label: 'Ray: Open sidebar',
    caption: 'Show the Ray clusters panel',
    icon: rayIcon,
    execute: () => shell.activateById(panel.id)
  });

  commands.addCommand(CommandIDs.newCluster, {
    label: 'Ray: New cluster',
    caption: 'Open the form that starts a new Ray cluster',
    execute: () => {
      shell.activateById(panel.id);
      panel.focusCreateForm();
    }
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Ray: Refresh clusters',
    icon: args => (args.toolbar ? refreshIcon : undefined),
    caption: 'Fetch the clusters from the server now',
    execute: () => model.refresh()
  });

  commands.addCommand(CommandIDs.openDashboard, {
    label: args => `Ray dashboard: ${args.name ?? ''}`,
    caption: "Open the cluster's Ray dashboard in a tab",
    execute: args => {
      const name = String(args.name);
      const url = String(args.url);
      const existing = dashboards.find(w => w.id === dashboardId(name));
      if (existing && !existing.content.ended) {
        shell.activateById(existing.id);
        return;
      }
      existing?.dispose();
      const content = new DashboardView(name, url);
      const follow = () => content.follow(model.clusters);
      model.stateChanged.connect(follow);
      content.disposed.connect(() => model.stateChanged.disconnect(follow));
      const widget = new MainAreaWidget({ content });
      widget.id = dashboardId(name);
      widget.title.label = `Ray: ${name}`;
      widget.title.icon = rayIcon;
      widget.title.closable = true;
      void dashboards.add(widget);
      shell.add(widget, 'main');
      shell.activateById(widget.id);
    }
  });

  commands.addCommand(CommandIDs.insertConnectCode, {
    label: args => `Insert code to connect to ${args.name ?? 'the cluster'}`,
    caption: 'Put %raycluster attach into the active notebook cell',
    isEnabled: () => !!notebooks?.currentWidget,
    execute: args => {
      const notebook = notebooks?.currentWidget;
      if (!notebook) {
        Notification.warning('Open a notebook to insert the Ray connect code into.', {
          autoClose: 5000
        });
        return;
      }
      const code = connectCode(String(args.name));
      const content = notebook.content;
      const cell = content.activeCell;
      // Fill the active cell when it is an empty code cell; otherwise add a cell below it.
      if (!cell || cell.model.type !== 'code' || cell.model.sharedModel.getSource().trim()) {
        NotebookActions.insertBelow(content);
        NotebookActions.changeCellType(content, 'code');
      }
      content.activeCell!.model.sharedModel.setSource(code);
      shell.activateById(notebook.id);
    }
  });

  if (palette) {
    for (const command of [CommandIDs.newCluster, CommandIDs.refresh, CommandIDs.openSidebar]) {
      palette.addItem({ command, category: PALETTE_CATEGORY });
    }
  }
}

function dashboardId(name: string): string {
  return `raykube-dashboard-${name}`;
}
