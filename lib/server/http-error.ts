// The error every server check throws: answered to the client with OpenAI's error body, its status and the
// request field it names.
/** An error answered to the client with OpenAI's error body. */
export class HttpError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly errorCode: string | null;
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    message: string,
    options: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.type = options.type ?? (status === 401 ? 'authentication_error' : status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = options.param ?? null;
    this.errorCode = options.code ?? null;
    this.headers = options.headers ?? {};
  }

  body(): object {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.errorCode } };
  }
}

/** 400 `invalid_value` naming `param`, with what was expected and (cut short) what came. */
export function bad(param: string, expected: string, value: unknown): HttpError {
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value) : JSON.stringify(value);
  return new HttpError(400, `Invalid value for '${param}': expected ${expected}, got ${shown ?? typeof value}.`, {
    param, code: 'invalid_value',
  });
}
