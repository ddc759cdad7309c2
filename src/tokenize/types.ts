/**
 * Tokenizer contract shared by the mock engine and the gateway: both must compute the same
 * token ids as vLLM for the same request.
 */
export interface ChatMessage {
  role: string;
  content: string | Array<{ type: string; text?: string; [k: string]: unknown }> | null;
  name?: string;
  tool_calls?: unknown[];
  tool_call_id?: string;
  [k: string]: unknown;
}

export interface ChatRequestLike {
  messages: ChatMessage[];
  tools?: unknown[];
  add_generation_prompt?: boolean;
  continue_final_message?: boolean;
  chat_template_kwargs?: Record<string, unknown>;
  /** vLLM's `add_special_tokens` for chat (default false: the template adds them) */
  add_special_tokens?: boolean;
}

export interface Tokenizer {
  readonly model: string;
  /** Completion prompt → ids, with vLLM's default `add_special_tokens: true` (BOS rules of the model). */
  encodePrompt(prompt: string, addSpecialTokens?: boolean): Promise<number[]>;
  /** Chat request → rendered template → ids (vLLM's defaults). */
  encodeChat(req: ChatRequestLike): Promise<number[]>;
  /** Render the chat template to text (for /tokenize debugging and tests). */
  renderChat(req: ChatRequestLike): Promise<string>;
  decode(ids: number[], skipSpecialTokens?: boolean): Promise<string>;
  /** ids that end generation (eos) */
  readonly eosTokenIds: number[];
  close?(): Promise<void>;
}
