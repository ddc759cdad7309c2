import { createServer } from "node:net";

/**
 * A free TCP port on 127.0.0.1, asked of the kernel (port 0) and released at once: checked, not
 * reserved, so the caller binds it right after (another process could take it in between).
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a !== null ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}
