import type { ApiError } from '../protocol/generated/ApiError';
import type { ErrorCode } from '../protocol/generated/ErrorCode';

/**
 * Codes the client itself produces besides the server's ErrorCode: the socket closed before an answer came
 * (`disconnected`), or the request could not reach the server at all (`network`).
 */
export type ClientErrorCode = ErrorCode | 'disconnected' | 'network';

/** One error type for REST and WebSocket failures, so the UI branches on `code` in one place. */
export class ApiRequestError extends Error {
  readonly code: ClientErrorCode;
  /** HTTP status for REST errors. */
  readonly status: number | undefined;
  /** Seconds to wait before retrying (from `Retry-After`), when the server said so. */
  readonly retryAfterSeconds: number | undefined;
  /**
   * The client gave up waiting with no answer at all (its own timer), as opposed to the server answering
   * `timeout`: only the first says anything about the connection.
   */
  readonly unanswered: boolean;

  constructor(
    code: ClientErrorCode,
    message: string,
    options: { status?: number; retryAfterSeconds?: number; unanswered?: boolean } = {},
  ) {
    super(message);
    this.name = 'ApiRequestError';
    this.code = code;
    this.status = options.status;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.unanswered = options.unanswered ?? false;
  }

  static fromApiError(error: ApiError, options: { status?: number; retryAfterSeconds?: number } = {}) {
    return new ApiRequestError(error.code, error.message, options);
  }

  /** Whether the same request may succeed if sent again later (mirrors `ErrorCode::is_retryable`). */
  get retryable(): boolean {
    return (
      this.code === 'unavailable' ||
      this.code === 'timeout' ||
      this.code === 'rate_limited' ||
      this.code === 'internal' ||
      this.code === 'disconnected' ||
      this.code === 'network'
    );
  }
}

export function asApiRequestError(error: unknown): ApiRequestError {
  if (error instanceof ApiRequestError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new ApiRequestError('network', message);
}
