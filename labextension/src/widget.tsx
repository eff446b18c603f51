/**
 * The sidebar panel. It only reads the model's getters and calls the model (create, scale,
 * stop) or commands (dashboard, connect code); it holds no REST or lifecycle logic. The
 * pieces live beside it: createForm.tsx (the form) and clusterCard.tsx (one cluster).
 */
import { refreshIcon, ToolbarButtonComponent, VDomRenderer } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { ClusterCard } from './clusterCard';
import { CommandIDs } from './commands';
import { CreateForm } from './createForm';
import { rayIcon } from './icon';
import { ClusterListModel } from './model';

export class ClusterPanel extends VDomRenderer<ClusterListModel> {
  constructor(model: ClusterListModel, commands: CommandRegistry) {
    super(model);
    this._commands = commands;
    this.id = 'raykube-sidebar';
    this.addClass('jp-RayKube');
    this.title.icon = rayIcon;
    this.title.caption = 'Ray clusters';
  }

  /** Open the create form and put the cursor in its name field. */
  focusCreateForm(): void {
    this._focusRequest += 1;
    this.update();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.active = true;
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.active = false;
  }

  protected render(): React.ReactElement {
    const { model } = this;
    const commands = this._commands;
    const error = model.error;
    return (
      <div className="jp-RayKube-body">
        <div className="jp-RayKube-header">
          <h2 className="jp-RayKube-title">Ray clusters</h2>
          <ToolbarButtonComponent
            icon={refreshIcon}
            tooltip="Refresh clusters"
            onClick={() => void commands.execute(CommandIDs.refresh)}
          />
        </div>
        {error && (
          <div className="jp-RayKube-error" role="alert">
            <span className="jp-RayKube-errorText">{error.message}</span>
            <button
              className="jp-RayKube-dismiss"
              aria-label="Dismiss"
              title="Dismiss"
              onClick={() => model.clearError()}
            >
              ×
            </button>
          </div>
        )}
        <CreateForm model={model} focusRequest={this._focusRequest} />
        <div className="jp-RayKube-clusters">
          {!model.loaded && !error && <div className="jp-RayKube-empty">Loading clusters…</div>}
          {model.loaded && model.clusters.length === 0 && (
            <div className="jp-RayKube-empty">No Ray clusters yet. Start one above.</div>
          )}
          {model.clusters.map(cluster => (
            <ClusterCard
              key={cluster.name}
              cluster={cluster}
              model={model}
              commands={commands}
              busy={model.busy.has(cluster.name)}
            />
          ))}
        </div>
      </div>
    );
  }

  private _commands: CommandRegistry;
  private _focusRequest = 0;
}
