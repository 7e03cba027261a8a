// /metrics in Prometheus' text format: request counts and latencies by endpoint and status, plus the
// ParallelContext's own counters (slots, queue, tokens).
import type { ParallelContext } from '../parallel.js';

const BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export class Metrics {
  readonly #requests = new Map<string, number>();
  readonly #latency = new Map<string, { buckets: number[]; sum: number; count: number }>();
  /** Requests refused with 503 (queue full). */
  rejected = 0;
  /** Connections refused with 503 (maxConnections or maxConnectionsPerAddress reached). */
  refusedConnections = 0;

  request(endpoint: string, status: number, seconds: number): void {
    const key = `endpoint="${endpoint}",status="${status}"`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
    let h = this.#latency.get(endpoint);
    if (!h) this.#latency.set(endpoint, (h = { buckets: BUCKETS.map(() => 0), sum: 0, count: 0 }));
    BUCKETS.forEach((b, i) => {
      if (seconds <= b) h!.buckets[i]++;
    });
    h.sum += seconds;
    h.count++;
  }

  render(context: ParallelContext, active: number, connections: number): string {
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: [string, number][]) => {
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, value] of samples) lines.push(`${name}${labels ? `{${labels}}` : ''} ${value}`);
    };
    metric('huozi_requests_total', 'counter', 'HTTP requests answered, by endpoint and status.', [...this.#requests]);
    lines.push('# HELP huozi_request_duration_seconds Time from request to the end of the response.');
    lines.push('# TYPE huozi_request_duration_seconds histogram');
    for (const [endpoint, h] of this.#latency) {
      BUCKETS.forEach((b, i) => lines.push(`huozi_request_duration_seconds_bucket{endpoint="${endpoint}",le="${b}"} ${h.buckets[i]}`));
      lines.push(`huozi_request_duration_seconds_bucket{endpoint="${endpoint}",le="+Inf"} ${h.count}`);
      lines.push(`huozi_request_duration_seconds_sum{endpoint="${endpoint}"} ${h.sum}`);
      lines.push(`huozi_request_duration_seconds_count{endpoint="${endpoint}"} ${h.count}`);
    }
    metric('huozi_requests_rejected_total', 'counter', 'Requests refused with 503 because the queue was full.', [['', this.rejected]]);
    metric('huozi_connections_refused_total', 'counter', 'Connections refused with 503 (too many open, in all or from one address).', [['', this.refusedConnections]]);
    metric('huozi_connections_open', 'gauge', 'Client connections open.', [['', connections]]);
    metric('huozi_requests_in_flight', 'gauge', 'Generation requests being served or waiting for a slot.', [['', active]]);
    if (!context.disposed) {
      const s = context.stats();
      metric('huozi_slots_total', 'gauge', 'Sequences generated at once.', [['', context.parallel]]);
      metric('huozi_slots_busy', 'gauge', 'Slots serving a request.', [['', s.busySlots]]);
      metric('huozi_requests_waiting', 'gauge', 'Requests waiting for a free slot.', [['', s.waiting]]);
      metric('huozi_prompt_tokens_total', 'counter', 'Prompt tokens evaluated.', [['', s.promptTokens]]);
      metric('huozi_prompt_tokens_reused_total', 'counter', 'Prompt tokens served from a slot\'s cache.', [['', s.reusedTokens]]);
      metric('huozi_prompt_tokens_shared_total', 'counter', 'Of the reused prompt tokens, those copied from another busy slot (the choices of one prompt, a shared system prompt).', [['', s.sharedTokens]]);
      metric('huozi_generated_tokens_total', 'counter', 'Tokens generated.', [['', s.generatedTokens]]);
      metric('huozi_decode_calls_total', 'counter', 'llama_decode calls (batches).', [['', s.decodeCalls]]);
      metric('huozi_generations_completed_total', 'counter', 'Generations that ended normally.', [['', s.completed]]);
      metric('huozi_generations_cancelled_total', 'counter', 'Generations cancelled (client gone or stopped).', [['', s.cancelled]]);
      metric('huozi_generations_failed_total', 'counter', 'Generations that failed.', [['', s.failed]]);
    }
    return `${lines.join('\n')}\n`;
  }
}
