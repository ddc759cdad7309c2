import { StringDecoder } from "node:string_decoder";

/**
 * Incremental Server-Sent-Events splitter: feed raw chunks, get whole events (the text up to and
 * including the blank line that ends each). Bounded: an event larger than `maxEventBytes` is
 * passed through in pieces rather than buffered forever. Hand-written rather than
 * eventsource-parser because the relay needs each event's bytes, not its parsed fields (README,
 * dependency table).
 */
export class SseSplitter {
  private readonly dec = new StringDecoder("utf8");
  private buf = "";

  constructor(private readonly maxEventBytes = 8 * 1024 * 1024) {}

  push(chunk: Buffer): string[] {
    this.buf += this.dec.write(chunk);
    const out: string[] = [];
    let start = 0;
    for (;;) {
      const i = this.buf.indexOf("\n\n", start);
      const j = this.buf.indexOf("\r\n\r\n", start);
      let end: number;
      if (i === -1 && j === -1) break;
      if (j !== -1 && (i === -1 || j < i)) end = j + 4;
      else end = i + 2;
      out.push(this.buf.slice(start, end));
      start = end;
    }
    this.buf = this.buf.slice(start);
    if (this.buf.length > this.maxEventBytes) {
      out.push(this.buf);
      this.buf = "";
    }
    return out;
  }

  /** whatever is left (an unterminated last event) */
  end(): string {
    const rest = this.buf + this.dec.end();
    this.buf = "";
    return rest;
  }
}

/** The `data:` payload of one event (lines joined with "\n"), or null if it has none. */
export function eventData(event: string): string | null {
  let data: string | null = null;
  for (const raw of event.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!line.startsWith("data:")) continue;
    const v = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
    data = data === null ? v : `${data}\n${v}`;
  }
  return data;
}
