/**
 * A multipart/form-data (or urlencoded) body's fields, parsed by the runtime's fetch
 * implementation (undici's `Response.formData()`, built into Node): the audio endpoints'
 * requests carry their `model` there, next to the file.
 */
export async function parseForm(body: Buffer, contentType: string): Promise<FormData> {
  // a copy into a plain ArrayBuffer: the Response constructor's types refuse a shared-buffer view
  return new Response(new Uint8Array(body).buffer, {
    headers: { "content-type": contentType },
  }).formData();
}

/** A form's text field, or null when absent or a file. */
export function formText(form: FormData, name: string): string | null {
  const v = form.get(name);
  return typeof v === "string" ? v : null;
}
