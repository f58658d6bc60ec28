import type { ApiError } from '../protocol/generated/ApiError';
import type { AuthResponse } from '../protocol/generated/AuthResponse';
import type { ErrorCode } from '../protocol/generated/ErrorCode';
import type { GetUsersRequest } from '../protocol/generated/GetUsersRequest';
import type { LoginRequest } from '../protocol/generated/LoginRequest';
import type { RegisterRequest } from '../protocol/generated/RegisterRequest';
import type { User } from '../protocol/generated/User';
import type { UsersPage } from '../protocol/generated/UsersPage';
import { ApiRequestError } from './errors';

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface RestClient {
  register(request: RegisterRequest): Promise<AuthResponse>;
  login(request: LoginRequest): Promise<AuthResponse>;
  me(token: string): Promise<User>;
  getUsers(token: string, request: GetUsersRequest): Promise<UsersPage>;
}

const STATUS_CODES: Record<number, ErrorCode> = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  405: 'method_not_allowed',
  409: 'conflict',
  413: 'payload_too_large',
  422: 'validation',
  429: 'rate_limited',
  503: 'unavailable',
  504: 'timeout',
};

/** `Retry-After` is either delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value == null || value.trim() === '') return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

function isApiErrorBody(body: unknown): body is { error: ApiError } {
  if (typeof body !== 'object' || body === null || !('error' in body)) return false;
  const error = (body as { error: unknown }).error;
  return (
    typeof error === 'object' &&
    error !== null &&
    typeof (error as ApiError).code === 'string' &&
    typeof (error as ApiError).message === 'string'
  );
}

async function errorFrom(response: Response): Promise<ApiRequestError> {
  const retryAfterSeconds = parseRetryAfter(response.headers.get('Retry-After'));
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    body = undefined;
  }
  const options = { status: response.status, ...(retryAfterSeconds !== undefined ? { retryAfterSeconds } : {}) };
  if (isApiErrorBody(body)) return ApiRequestError.fromApiError(body.error, options);
  const code = STATUS_CODES[response.status] ?? (response.status >= 500 ? 'internal' : 'bad_request');
  return new ApiRequestError(code, response.statusText || `HTTP ${response.status}`, options);
}

export function createRestClient(options: { baseUrl?: string; fetch?: FetchLike } = {}): RestClient {
  const baseUrl = options.baseUrl ?? '';
  const doFetch: FetchLike = options.fetch ?? ((input, init) => globalThis.fetch(input, init));

  async function call<T>(path: string, init: RequestInit): Promise<T> {
    let response: Response;
    try {
      response = await doFetch(baseUrl + path, {
        ...init,
        headers: { Accept: 'application/json', ...(init.headers as Record<string, string> | undefined) },
      });
    } catch (error) {
      throw new ApiRequestError('network', error instanceof Error ? error.message : 'network error');
    }
    if (!response.ok) throw await errorFrom(response);
    return (await response.json()) as T;
  }

  const postJson = <T>(path: string, body: unknown) =>
    call<T>(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

  return {
    register: (request) => postJson<AuthResponse>('/api/register', request),
    login: (request) => postJson<AuthResponse>('/api/login', request),
    me: (token) => call<User>('/api/me', { headers: { Authorization: `Bearer ${token}` } }),
    getUsers: (token, request) => {
      const query = new URLSearchParams();
      // By id (comma-separated), alone: the user-service refuses ids together with prefix, after or limit.
      if (request.ids !== undefined) query.set('ids', request.ids.join(','));
      if (request.prefix !== undefined) query.set('prefix', request.prefix);
      if (request.after !== undefined) query.set('after', String(request.after));
      if (request.limit !== undefined) query.set('limit', String(request.limit));
      const qs = query.toString();
      return call<UsersPage>(`/api/users${qs ? `?${qs}` : ''}`, { headers: { Authorization: `Bearer ${token}` } });
    },
  };
}
