// Where the weights go (issue #17): cpuMoe (llama.cpp --cpu-moe / --n-cpu-moe), tensorOverrides (-ot) and fit's
// budget, checked before anything is loaded; the placements load and generate the reference tokens; the cost
// model that gpuLayers 'auto' ranks placements by. With devices, the RPC tests (rpc.test.ts) place tensors on a
// server that stands in for a GPU.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { estimateMemory, expertPattern, loadModel, ModelLoadError, planMemory, type Model } from '../../dist/index.js';
import { placementCost, weightLayout } from '../../dist/placement.js';
import { readGguf } from '../../dist/gguf/reader.js';
import { EOU, f16Path, reference } from '../helpers.js';

const typeErr = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeErr = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };

let local: Model;
let expected: number[][];
beforeAll(async () => {
  local = await loadModel(f16Path);
  const context = await local.createContext({ contextSize: 512, threads: 1 });
  expected = [];
  for (const g of reference.greedy.slice(0, 3)) {
    expected.push(Array.from((await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 24, stopTokens: [EOU] }).result).tokens));
  }
  await context.dispose();
});
afterAll(() => local?.dispose());

async function greedy(model: Model): Promise<number[][]> {
  const context = await model.createContext({ contextSize: 512, threads: 1 });
  const out: number[][] = [];
  for (const g of reference.greedy.slice(0, 3)) {
    out.push(Array.from((await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 24, stopTokens: [EOU] }).result).tokens));
  }
  await context.dispose();
  return out;
}

describe('placement options are checked before anything is read', () => {
  it.each([
    ['cpuMoe negative', { cpuMoe: -1 }, rangeErr, /cpuMoe/],
    ['cpuMoe not a number', { cpuMoe: 'most' }, typeErr, /cpuMoe/],
    ['cpuMoe fractional', { cpuMoe: 1.5 }, rangeErr, /cpuMoe/],
    ['tensorOverrides not an array', { tensorOverrides: { pattern: 'x', device: 'CPU' } }, typeErr, /tensorOverrides/],
    ['an override without a device', { tensorOverrides: [{ pattern: 'ffn' }] }, typeErr, /tensorOverrides\[0\]\.device/],
    ['an override with an unknown key', { tensorOverrides: [{ pattern: 'ffn', device: 'CPU', buft: 'x' }] }, typeErr, /tensorOverrides\[0\]/],
    ['a pattern that is not a regular expression', { tensorOverrides: [{ pattern: 'ffn_(up', device: 'CPU' }] }, rangeErr, /tensorOverrides\[0\]\.pattern/],
    ['a pattern too long for std::regex', { tensorOverrides: [{ pattern: 'a'.repeat(2000), device: 'CPU' }] }, rangeErr, /at most 1024 characters/],
    ['a pattern nested too deeply', { tensorOverrides: [{ pattern: `${'('.repeat(40)}a${')'.repeat(40)}`, device: 'CPU' }] }, rangeErr, /nesting at most 32/],
    ['too many rules', { tensorOverrides: Array.from({ length: 129 }, () => ({ pattern: 'output', device: 'CPU' })) }, rangeErr, /at most 128 rules/],
    ['a pattern that backtracks exponentially', { tensorOverrides: [{ pattern: '(.*)*x', device: 'CPU' }] }, rangeErr, /exponential time/],
    ['a pattern with an alternation that repeats', { tensorOverrides: [{ pattern: '(a|ab)+_exps', device: 'CPU' }] }, rangeErr, /quantified group/],
    ['a pattern with five unbounded quantifiers', { tensorOverrides: [{ pattern: '.*a.*b.*c.*d.*e', device: 'CPU' }] }, rangeErr, /more than 4 unbounded/],
    ["'auto' with cpuMoe", { gpuLayers: 'auto', cpuMoe: 2 }, rangeErr, /gpuLayers/],
    ["fit without 'auto'", { gpuLayers: 'max', fit: { budgetMiB: 8000 } }, typeErr, /fit/],
    ['a negative budget', { gpuLayers: 'auto', fit: { budgetMiB: -1 } }, rangeErr, /fit\.budgetMiB/],
    ['a budget that is not a number', { gpuLayers: 'auto', fit: { budgetMiB: '8G' } }, typeErr, /fit\.budgetMiB/],
    ['an unknown key of fit', { gpuLayers: 'auto', fit: { budget: 8000 } }, typeErr, /Unknown option "budget" in fit/],
  ])('%s', async (_, options, error, message) => {
    await expect(loadModel(f16Path, options as never)).rejects.toMatchObject({ ...error, message: expect.stringMatching(message) });
    await expect(planMemory(f16Path, options as never)).rejects.toMatchObject({ ...error, message: expect.stringMatching(message) });
  });

  it('checks the rules against the file: a pattern that matches no tensor, more layers than the model has', async () => {
    await expect(loadModel(f16Path, { tensorOverrides: [{ pattern: 'blk\\.0\\.attn_q', device: 'CPU' }, { pattern: 'no_such_tensor', device: 'CPU' }] }))
      .rejects.toMatchObject({ ...rangeErr, message: expect.stringMatching(/tensorOverrides\[1\]\.pattern.*no_such_tensor/s) });
    await expect(loadModel(f16Path, { cpuMoe: 5 })).rejects.toMatchObject({ ...rangeErr, message: expect.stringMatching(/at most the model's 4 layers/) });
    // A budget naming a GPU this machine lacks (the CPU build has none).
    await expect(loadModel(f16Path, { gpuLayers: 'auto', fit: { budgetMiB: { CUDA7: 8000 } } })).rejects.toMatchObject({
      ...rangeErr, message: expect.stringMatching(/fit\.budgetMiB\.CUDA7/),
    });
  });

  it('names the device it does not know, and a pattern std::regex refuses', async () => {
    const error = await loadModel(f16Path, { tensorOverrides: [{ pattern: 'ffn_up_exps', device: 'CUDA9' }] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ModelLoadError);
    expect((error as Error).message).toMatch(/no device named "CUDA9" for tensors matching ffn_up_exps \(devices: .*CPU/);
    // Valid in JavaScript, not in C++'s ECMAScript grammar (lookbehind).
    const behind = await loadModel(f16Path, { tensorOverrides: [{ pattern: '(?<=blk\\.0\\.)ffn_up_exps', device: 'CPU' }] }).catch((e: unknown) => e);
    expect(behind).toBeInstanceOf(ModelLoadError);
    expect((behind as Error).message).toMatch(/not a regular expression llama\.cpp can use/);
  });
});

describe('placements load and answer as the default one', () => {
  it('cpuMoe (all, and the first n layers) and tensorOverrides to the CPU: the reference greedy tokens, the plan in model.gpuPlan', async () => {
    for (const options of [
      { cpuMoe: 'all' as const },
      { cpuMoe: 2 },
      { tensorOverrides: [{ pattern: 'blk\\.[13]\\.ffn_(up|down|gate)_exps', device: 'CPU' }, { pattern: 'output', device: 'CPU' }] },
    ]) {
      const model = await loadModel(f16Path, options);
      expect(model.gpuPlan?.chosenBy).toBe('options');
      expect(model.gpuPlan!.overrides.length).toBeGreaterThan(0);
      expect(model.gpuPlan!.overrides.every((o) => o.buffer === 'CPU')).toBe(true);
      // The CPU build offloads nothing: every weight is in host memory.
      expect(model.gpuPlan!.cost.deviceBytes).toBe(0);
      expect(await greedy(model)).toEqual(expected);
      await model.dispose();
    }
    const two = await loadModel(f16Path, { cpuMoe: 2 });
    expect(two.gpuPlan!.overrides.map((o) => o.pattern)).toEqual([expertPattern(0), expertPattern(1)]);
    await two.dispose();
  });

  it('without placement options there is no plan; the estimate takes the same options', async () => {
    expect(local.gpuPlan).toBeUndefined();
    const plain = await planMemory(f16Path, { contextSize: 512 });
    expect(plain.plan).toBeUndefined();
    const moe = await planMemory(f16Path, { contextSize: 512, cpuMoe: 'all' });
    expect(moe.plan?.overrides).toEqual([{ pattern: expertPattern(), buffer: 'CPU' }]);
    expect((await estimateMemory(f16Path, { contextSize: 512, cpuMoe: 'all' })).map((r) => r.name)).toEqual(moe.devices.map((r) => r.name));
  });
});

describe("the cost model of gpuLayers 'auto'", () => {
  it('counts what a generated token reads from host memory: whole tensors, a share of the experts, no token embedding', async () => {
    const layout = weightLayout(await readGguf(f16Path));
    expect(layout.layers).toBe(4);
    expect(layout.experts).toBe(8);
    expect(layout.expertsUsed).toBe(2);
    const total = layout.tensors.reduce((a, t) => a + t.bytes, 0);
    const bytes = (re: RegExp) => layout.tensors.filter((t) => re.test(t.name)).reduce((a, t) => a + t.bytes, 0);
    const experts = bytes(new RegExp(expertPattern()));
    const embedding = bytes(/^token_embd/);
    // Everything on the GPU but the token embedding (llama.cpp keeps the input layer in host memory).
    expect(placementCost(layout, -1, [])).toEqual({ hostBytes: embedding, hostBytesPerToken: 0, deviceBytes: total - embedding });
    // Nothing offloaded: a token reads every weight but the embedding, and a quarter of the experts (2 of 8).
    const none = placementCost(layout, 0, []);
    expect(none.hostBytes).toBe(total);
    expect(none.hostBytesPerToken).toBeCloseTo(total - embedding - experts + experts / 4, 0);
    // Every expert in host memory, the rest on the GPU: a quarter of the experts per token.
    const moe = placementCost(layout, -1, [{ pattern: expertPattern(), buffer: 'CPU' }]);
    expect(moe.hostBytesPerToken).toBeCloseTo(experts / 4, 0);
    expect(moe.hostBytes).toBe(experts + embedding);
    // -ngl 2 keeps the first two layers and the output layer in host memory (llama.cpp offloads the last ones).
    const layer = (i: number) => bytes(new RegExp(`^blk\\.${i}\\.`));
    const layerExperts = (i: number) => bytes(new RegExp(expertPattern(i)));
    const twoLayers = placementCost(layout, 2, []);
    expect(twoLayers.hostBytes).toBe(layer(0) + layer(1) + embedding + bytes(/^output/));
    expect(twoLayers.hostBytesPerToken).toBeCloseTo(
      layer(0) + layer(1) - (layerExperts(0) + layerExperts(1)) * 0.75 + bytes(/^output/), 0);
  });
});
