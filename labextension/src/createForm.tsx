/**
 * The collapsible "New cluster" form. It starts from the server's default request (its
 * groups, whatever their names and number, and the suggested name), checks the fields in the
 * browser, and sends only what the user changed. Errors stay next to the field they are about.
 */
import * as React from 'react';

import type { IClusterSpec } from './api';
import {
  buildRequest,
  Draft,
  FieldErrors,
  fieldValue,
  GROUP_FIELDS,
  groupKey,
  LABELS,
  placeServerError,
  validate
} from './form';
import type { ClusterListModel } from './model';

interface IFormProps {
  model: ClusterListModel;
  focusRequest: number;
}

export function CreateForm({ model, focusRequest }: IFormProps): React.ReactElement {
  const [open, setOpen] = React.useState(true);
  const nameInput = React.useRef<HTMLInputElement>(null);
  const pendingFocus = React.useRef(false);
  const defaults = model.info?.defaults;

  React.useEffect(() => {
    if (focusRequest > 0) {
      setOpen(true);
      pendingFocus.current = true;
    }
  }, [focusRequest]);

  // The name input exists once the <details> is open and the server's defaults are in.
  React.useEffect(() => {
    if (pendingFocus.current && defaults) {
      pendingFocus.current = false;
      requestAnimationFrame(() => nameInput.current?.focus());
    }
  });

  return (
    <details
      className="jp-RayKube-create"
      open={open}
      onToggle={event => setOpen((event.target as HTMLDetailsElement).open)}
    >
      <summary>New cluster</summary>
      {defaults ? (
        <FormBody model={model} defaults={defaults} nameInput={nameInput} />
      ) : (
        <div className="jp-RayKube-empty">Reading the server's defaults…</div>
      )}
    </details>
  );
}

interface IBodyProps {
  model: ClusterListModel;
  defaults: IClusterSpec;
  nameInput: React.RefObject<HTMLInputElement>;
}

function FormBody({ model, defaults, nameInput }: IBodyProps): React.ReactElement {
  const [draft, setDraft] = React.useState<Draft>({});
  const [serverError, setServerError] = React.useState<{ key: string; message: string } | null>(
    null
  );
  const [submitting, setSubmitting] = React.useState(false);
  // Show a field's browser-side error once the user touched it (or another field of its
  // group: min and max are checked together) or tried to submit.
  const [shown, setShown] = React.useState<Set<string>>(new Set());
  const touched = (key: string) =>
    shown.has('*') || shown.has(key) || (key.includes('.') && shown.has(groupOf(key)));

  const browserErrors = validate(defaults, draft);
  const errors: FieldErrors = {};
  for (const key of Object.keys(browserErrors)) {
    if (touched(key)) {
      errors[key] = browserErrors[key];
    }
  }
  if (serverError && serverError.key && !errors[serverError.key]) {
    errors[serverError.key] = serverError.message;
  }

  const edit = (key: string, value: string) => {
    setDraft(d => ({ ...d, [key]: value }));
    // `cpu.max` also marks its group (`cpu.`) as touched.
    setShown(s => new Set(s).add(key).add(groupOf(key)));
    setServerError(null);
  };

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setShown(new Set(['*']));
    if (Object.keys(browserErrors).length) {
      return;
    }
    setSubmitting(true);
    const result = await model.create(buildRequest(defaults, draft));
    setSubmitting(false);
    if (result.ok) {
      setDraft({});
      setShown(new Set());
    } else {
      setServerError(placeServerError(defaults, result.message));
    }
  };

  const input = (key: string, label: string, extra: Partial<IInputProps> = {}) => (
    <FieldInput
      fieldKey={key}
      label={label}
      value={fieldValue(defaults, draft, key)}
      error={errors[key]}
      onChange={value => edit(key, value)}
      {...extra}
    />
  );
  const groupMessages = (group: string) =>
    GROUP_FIELDS.map(f => errors[groupKey(group, f)]).filter(Boolean);

  return (
    <form className="jp-RayKube-form" onSubmit={submit} noValidate>
      <label className="jp-RayKube-label" htmlFor="raykube-new-name">
        Name
      </label>
      <div className="jp-RayKube-field">
        <input
          id="raykube-new-name"
          ref={nameInput}
          className="jp-mod-styled jp-RayKube-nameInput"
          name="name"
          placeholder={defaults.name}
          title={`Leave empty for ${defaults.name}`}
          autoComplete="off"
          spellCheck={false}
          aria-invalid={!!errors.name}
          value={draft.name ?? ''}
          onChange={e => edit('name', e.target.value)}
        />
        <FieldError message={errors.name} />
      </div>
      <table className="jp-RayKube-formGroups">
        <thead>
          <tr>
            <th>Group</th>
            <th title="Nodes kept at least">Min</th>
            <th title="Nodes at most">Max</th>
            <th title={LABELS.cpus}>CPUs</th>
            <th title={LABELS.gpus}>GPUs</th>
          </tr>
        </thead>
        <tbody>
          {defaults.groups.map(group => (
            <React.Fragment key={group.name}>
              <tr data-group={group.name}>
                <td className="jp-RayKube-groupName" title={group.name}>
                  {group.name}
                </td>
                {GROUP_FIELDS.map(field => (
                  <td key={field}>
                    {input(groupKey(group.name, field), `${group.name} ${LABELS[field]}`, {
                      quiet: true
                    })}
                  </td>
                ))}
              </tr>
              {groupMessages(group.name).length > 0 && (
                <tr className="jp-RayKube-rowError">
                  <td colSpan={5}>
                    {groupMessages(group.name).map((m, i) => (
                      <FieldError key={i} message={m} />
                    ))}
                  </td>
                </tr>
              )}
            </React.Fragment>
          ))}
        </tbody>
      </table>
      <label className="jp-RayKube-label" htmlFor="raykube-new-idle">
        Idle timeout (s)
      </label>
      <div className="jp-RayKube-field">
        {input('idle', 'Idle timeout in seconds', { id: 'raykube-new-idle', step: 'any' })}
      </div>
      {serverError && !serverError.key && (
        <div className="jp-RayKube-formError" role="alert">
          {serverError.message}
        </div>
      )}
      <button
        type="submit"
        className="jp-RayKube-button jp-mod-accept jp-RayKube-createButton"
        disabled={submitting}
      >
        {submitting ? 'Creating…' : 'Create'}
      </button>
    </form>
  );
}

/** `cpu.max` -> `cpu.`; other keys -> themselves. */
function groupOf(key: string): string {
  return key.includes('.') ? key.slice(0, key.lastIndexOf('.') + 1) : key;
}

interface IInputProps {
  id?: string;
  fieldKey: string;
  label: string;
  value: string;
  error?: string;
  onChange: (value: string) => void;
  step?: string;
  /** The message is shown elsewhere (a row below the group), not under the input. */
  quiet?: boolean;
}

function FieldInput(props: IInputProps): React.ReactElement {
  const input = (
    <input
      id={props.id}
      className="jp-mod-styled jp-RayKube-number"
      type="number"
      min={0}
      step={props.step ?? '1'}
      name={props.fieldKey}
      aria-label={props.label}
      aria-invalid={!!props.error}
      title={props.error || props.label}
      value={props.value}
      onChange={e => props.onChange(e.target.value)}
    />
  );
  return props.quiet ? (
    input
  ) : (
    <>
      {input}
      <FieldError message={props.error} />
    </>
  );
}

/** A field's message, under it; nothing when there is none. */
export function FieldError({ message }: { message?: string }): React.ReactElement | null {
  return message ? (
    <div className="jp-RayKube-fieldError" role="alert">
      {message}
    </div>
  ) : null;
}
