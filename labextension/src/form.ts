/**
 * The create form's logic, free of React: the draft starts from the server's default request,
 * is checked in the browser (what the server would refuse anyway, in the form's own words),
 * and becomes a request with only what the user changed, in the shape PATCH uses.
 */
import type { GroupChanges, IClusterSpec, ICreateRequest } from './api';

/** The fields of a group the form edits. */
export const GROUP_FIELDS = ['min', 'max', 'cpus', 'gpus'] as const;
export type GroupField = (typeof GROUP_FIELDS)[number];

/** What the user typed, as strings; keys are `name`, `idle`, and `<group>.<field>`. */
export type Draft = Record<string, string>;

/** Field key -> a message for people. */
export type FieldErrors = Record<string, string>;

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const NAME_MAX = 40;

export function groupKey(group: string, field: GroupField): string {
  return `${group}.${field}`;
}

/** The value a field shows: the user's text, else the default. */
export function fieldValue(defaults: IClusterSpec, draft: Draft, key: string): string {
  if (key in draft) {
    return draft[key];
  }
  if (key === 'name') {
    return '';
  }
  if (key === 'idle') {
    return String(defaults.idle_timeout_s);
  }
  const [group, field] = splitKey(key);
  const spec = defaults.groups.find(g => g.name === group);
  return spec ? String(spec[field]) : '';
}

/** Errors the browser can find without asking the server. */
export function validate(defaults: IClusterSpec, draft: Draft): FieldErrors {
  const errors: FieldErrors = {};
  const name = (draft.name ?? '').trim();
  if (name && (!NAME.test(name) || name.length > NAME_MAX)) {
    errors.name = `Use lowercase letters, digits and '-' (at most ${NAME_MAX}), e.g. ${defaults.name}.`;
  }
  const idle = fieldValue(defaults, draft, 'idle').trim();
  if (idle === '' || !(Number(idle) > 0)) {
    errors.idle = 'Idle timeout must be a number of seconds above 0.';
  }
  for (const group of defaults.groups) {
    const values: Partial<Record<GroupField, number>> = {};
    for (const field of GROUP_FIELDS) {
      const key = groupKey(group.name, field);
      const text = fieldValue(defaults, draft, key).trim();
      const value = Number(text);
      if (text === '' || !Number.isInteger(value) || value < 0) {
        errors[key] = `${LABELS[field]} must be a whole number, 0 or more.`;
      } else {
        values[field] = value;
      }
    }
    const { min, max, cpus, gpus } = values;
    if (min !== undefined && max !== undefined && max < min) {
      errors[groupKey(group.name, 'max')] = `Max must be at least min (${min}).`;
    }
    if (cpus === 0 && gpus === 0 && Object.keys(group.custom).length === 0) {
      errors[groupKey(group.name, 'cpus')] = 'A node needs at least 1 CPU or 1 GPU.';
    }
  }
  return errors;
}

/** The request body: only fields that differ from the defaults (call after `validate`). */
export function buildRequest(defaults: IClusterSpec, draft: Draft): ICreateRequest {
  const request: ICreateRequest = {};
  const name = (draft.name ?? '').trim();
  if (name && name !== defaults.name) {
    request.name = name;
  }
  const idle = Number(fieldValue(defaults, draft, 'idle'));
  if (idle !== defaults.idle_timeout_s) {
    request.idle_timeout_s = idle;
  }
  const groups: GroupChanges = {};
  for (const group of defaults.groups) {
    for (const field of GROUP_FIELDS) {
      const value = Number(fieldValue(defaults, draft, groupKey(group.name, field)));
      if (value !== group[field]) {
        groups[group.name] = { ...groups[group.name], [field]: value };
      }
    }
  }
  if (Object.keys(groups).length) {
    request.groups = groups;
  }
  return request;
}

/**
 * Where a server message belongs and how to say it in the form's words:
 * `groups.cpu.max=1 is not allowed: must be >= min (3)` -> key `cpu.max`, `must be >= min (3)`.
 * Messages about other things stay whole and go to the form as a whole (key '').
 */
export function placeServerError(
  defaults: IClusterSpec,
  message: string
): { key: string; message: string } {
  const parsed = parseFieldError(message);
  if (!parsed) {
    return { key: '', message };
  }
  const { path, allowed } = parsed;
  const text = allowed.charAt(0).toUpperCase() + allowed.slice(1);
  if (path === 'name') {
    return { key: 'name', message: `Name: ${allowed}` };
  }
  if (path === 'idle_timeout_s') {
    return { key: 'idle', message: `Idle timeout: ${allowed}` };
  }
  const parts = path.split('.');
  if (parts[0] === 'groups' && defaults.groups.some(g => g.name === parts[1])) {
    const field = parts[2] as GroupField;
    if ((GROUP_FIELDS as readonly string[]).includes(field)) {
      return { key: groupKey(parts[1], field), message: `${LABELS[field]}: ${text}` };
    }
  }
  return { key: '', message };
}

/** The field path and the rule of a server message `PATH=VALUE is not allowed: RULE`. */
export function parseFieldError(message: string): { path: string; allowed: string } | null {
  const match = /^([\w.-]+)=[\s\S]*? is not allowed: ([\s\S]*)$/.exec(message);
  return match ? { path: match[1], allowed: match[2] } : null;
}

/** Errors of a min/max pair as typed in a card's group row; keys `min` and `max`. */
export function validateBounds(min: string, max: string): Partial<Record<'min' | 'max', string>> {
  const errors: Partial<Record<'min' | 'max', string>> = {};
  const values: number[] = [];
  for (const [key, text] of [['min', min], ['max', max]] as const) {
    const value = Number(text.trim());
    if (text.trim() === '' || !Number.isInteger(value) || value < 0) {
      errors[key] = `${LABELS[key]} must be a whole number, 0 or more.`;
    }
    values.push(value);
  }
  if (!errors.min && !errors.max && values[1] < values[0]) {
    errors.max = `Max must be at least min (${values[0]}).`;
  }
  return errors;
}

export const LABELS: Record<GroupField, string> = {
  min: 'Min',
  max: 'Max',
  cpus: 'CPUs per node',
  gpus: 'GPUs per node'
};

function splitKey(key: string): [string, GroupField] {
  const dot = key.lastIndexOf('.');
  return [key.slice(0, dot), key.slice(dot + 1) as GroupField];
}
