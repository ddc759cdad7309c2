/** Typed errors for everything that can be wrong with bytes coming off the wire. */

export type ProtocolErrorCode =
  | "bad_frame_count"
  | "bad_seq_length"
  | "malformed_msgpack"
  | "bad_schema"
  | "limit_exceeded";

export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
  readonly code: ProtocolErrorCode;
  /** For `limit_exceeded`: the name of the `DecodeLimits` field that was exceeded. */
  readonly limit?: string;

  constructor(code: ProtocolErrorCode, message: string, limit?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    if (limit !== undefined) this.limit = limit;
  }
}

export function isProtocolError(e: unknown): e is ProtocolError {
  return e instanceof ProtocolError;
}
