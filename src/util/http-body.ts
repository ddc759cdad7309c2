import type { IncomingMessage } from "node:http";

/** The errors a body read ends with, made by the caller (each server has its own error type). */
export interface BodyErrors {
  /** the body is (or declares to be) larger than the limit */
  tooLarge: () => Error;
  /** the client closed the connection before the body ended */
  closed: () => Error;
}

/**
 * Read a request's whole body, refusing more than `maxBytes` before buffering it: a declared
 * Content-Length over the limit is refused at once, and a body that grows past it stops being
 * kept (the rest is drained; the response closes the connection).
 */
export function readBody(req: IncomingMessage, maxBytes: number, errors: BodyErrors): Promise<Buffer> {
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > maxBytes) {
    req.resume();
    return Promise.reject(errors.tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
      if (err) reject(err);
      else resolve(Buffer.concat(chunks, size));
    };
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > maxBytes) {
        chunks.length = 0;
        finish(errors.tooLarge());
        req.resume();
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => finish(null);
    const onError = (e: Error) => finish(e);
    const onClose = () => finish(errors.closed());
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}
