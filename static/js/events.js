// The kinds of event a job emits, by name: the one list the pages switch on. Their keys and
// meanings are defined in engine/config/events.py (served as JSON Schema at /api/v1/events/schema,
// tabulated in docs/events.md); tests/explorer/test_events_contract.py checks that this list
// equals the schema's.
export const KIND = Object.freeze({
  // training (engine.train)
  start: "start",
  step: "step",
  health: "health",
  moe: "moe",
  eval: "eval",
  attention: "attention",
  routing: "routing",
  nonfinite: "nonfinite",
  checkpoint: "checkpoint",
  end: "end",
  // inference and tokenizer jobs
  progress: "progress",
  generation: "generation",
  quantization: "quantization",
  // chat turns: each token as it is sampled, then the finished answer
  token: "token",
  reply: "reply",
  // attention jobs (a pretrained model on one text)
  attention_tokens: "attention_tokens",
  attention_heads: "attention_heads",
  // fine-tuning jobs (engine.finetune): answers before and after, the saved adapter
  answers: "answers",
  adapter: "adapter",
  // serving load tests: one point per arrival rate and batching policy
  load_point: "load_point",
  // the app: status changes, queue changes, numbers lost with a dead worker
  status: "status",
  queue: "queue",
  lost: "lost",
});
