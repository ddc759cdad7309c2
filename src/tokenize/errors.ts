/**
 * Typed tokenizer errors. `code` is stable so HTTP layers can map them to status codes
 * (bad request vs. misconfiguration vs. overload vs. upstream failure).
 */
export type TokenizerErrorCode =
  | "bad_request" // the request cannot be rendered/encoded (bad content part, template error, ...)
  | "config" // tokenizer files / --tokenizer spec invalid or missing
  | "unknown_model" // no tokenizer registered for the model
  | "overloaded" // worker pool queue full
  | "closed" // pool/tokenizer already closed
  | "remote" // remote /tokenize failed
  | "internal"; // a worker thread died or answered nonsense

export class TokenizerError extends Error {
  readonly code: TokenizerErrorCode;
  constructor(code: TokenizerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TokenizerError";
    this.code = code;
  }
}

export function isTokenizerError(e: unknown): e is TokenizerError {
  return e instanceof TokenizerError;
}
