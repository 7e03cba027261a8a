#!/usr/bin/env node
// The `huozi-gguf` command. Each command lives in its own file and is imported only when it runs, so that
// `--help` starts without loading llama.cpp.
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../binding.js';

const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };

export function samplingOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-m, --model <file>', 'GGUF model (default: the embedded huozi-tiny demo model)'))
    .addOption(new Option('-c, --ctx-size <n>', 'context size in tokens').argParser(intArg).default(2048))
    .addOption(new Option('-t, --threads <n>', 'CPU threads (default: available cores)').argParser(intArg))
    .addOption(new Option('--ngl, --gpu-layers <n>', 'layers to offload to the GPU, or "max" (also -ngl)').default('max'))
    .option('--rpc <servers>', 'RPC servers for layers, comma-separated host:port (huozi-gguf rpc-server; llama.cpp --rpc)')
    .addOption(new Option('--temp <x>', 'temperature (0 = greedy)').argParser(floatArg).default(0.2))
    .addOption(new Option('--top-k <n>', 'top-k sampling').argParser(intArg).default(40))
    .addOption(new Option('--top-p <x>', 'top-p sampling').argParser(floatArg).default(0.95))
    .addOption(new Option('--min-p <x>', 'min-p sampling').argParser(floatArg).default(0.05))
    .addOption(new Option('--repeat-penalty <x>', 'repetition penalty').argParser(floatArg).default(1.1))
    .addOption(new Option('--seed <n>', 'random seed').argParser(intArg));
}

function intArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new Error(`expected an integer, got "${value}"`);
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function floatArg(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got "${value}"`);
  return n;
}

const program = new Command()
  .name('huozi-gguf')
  .description('Run Huozi 3.5 and other llama.cpp GGUF models from Node.js')
  .version(pkg.version);

samplingOptions(
  program
    .command('chat', { isDefault: true })
    .description("chat with a model in Huozi's format (or the GGUF's own template); pipes: one message per line")
    .option('--system <text>', 'system prompt')
    .option('--template <name>', 'chat template: auto, huozi, chatml, or a Jinja file', 'auto')
    .addOption(new Option('-n, --max-tokens <n>', 'most tokens per answer').argParser(intArg))
    .option('--whole', 'with piped input: send all of standard input as one message', false)
    .option('--no-color', 'plain output'),
).action(async (opts) => (await import('./chat.js')).chat(opts));

samplingOptions(
  program
    .command('complete')
    .description('complete a raw prompt (no chat template) and print the text')
    .option('-p, --prompt <text>', 'the prompt (default: read standard input)')
    .addOption(new Option('-n, --max-tokens <n>', 'most tokens to generate').argParser(intArg).default(256))
    .option('--special', 'parse special-token text such as <|endofutterance|> in the prompt', false)
    .option('--stop <text...>', 'stop strings')
    .option('--timings', 'print speed figures to standard error', false),
).action(async (opts) => (await import('./complete.js')).complete(opts));

program
  .command('inspect')
  .description('show what a GGUF file holds (shape, vocabulary, tensor types), reading only its header')
  .argument('<model>', 'GGUF file')
  .option('--json', 'machine-readable output', false)
  .option('--tensors', 'list every tensor', false)
  .option('--memory', 'estimate memory per device (weights, KV cache, compute) without loading', false)
  .option('--ngl, --gpu-layers <n>', 'with --memory: layers on the GPU, or "max" (also -ngl)')
  .addOption(new Option('-c, --ctx-size <n>', 'with --memory: context size').argParser(intArg).default(4096))
  .action(async (path, opts) => (await import('./inspect.js')).inspectCommand(path, opts));

program
  .command('convert')
  .description("convert a Hugging Face checkpoint (Llama, Mistral, Mixtral/Huozi 3.5) to GGUF, as llama.cpp's convert_hf_to_gguf.py")
  .argument('<hf-dir>', 'checkpoint directory (config.json, *.safetensors, tokenizer.model)')
  .requiredOption('-o, --output <file>', 'where to write the GGUF')
  .option('--outtype <type>', 'f32, f16, bf16 or q8_0', 'f16')
  .option('--chat-template <name>', 'embed a chat template: huozi')
  .action(async (dir, opts) => (await import('./convert.js')).convertCommand(dir, opts));

program
  .command('quantize')
  .description('quantize a GGUF with llama.cpp (q4_0, q2_k, q4_k_m, ... as llama-quantize spells them)')
  .argument('[input]', 'GGUF to quantize')
  .argument('[output]', 'where to write the result')
  .argument('[type]', 'target type, e.g. q4_0 (see --list)')
  .option('--list', 'list the types (with a model: the size each would have)', false)
  .addOption(new Option('--threads <n>', 'threads').argParser(intArg))
  .option('--imatrix <file>', 'importance matrix (GGUF) from huozi-gguf imatrix or llama-imatrix')
  .option('--allow-requantize', 'allow quantizing tensors that are already quantized', false)
  .option('--leave-output-tensor', 'keep output.weight unquantized', false)
  .option('--pure', 'every tensor in the target type', false)
  .option('--output-tensor-type <type>', 'ggml type for output.weight')
  .option('--token-embedding-type <type>', 'ggml type for token_embd.weight')
  .option('--tensor-type <pattern=type...>', 'ggml type for tensors whose names match pattern')
  .action(async (input, output, type, opts) => (await import('./quantize.js')).quantizeCommand(input, output, type, opts));

program
  .command('imatrix')
  .description("compute an importance matrix (llama.cpp's GGUF format) for quantize --imatrix")
  .argument('<model>', 'GGUF model (f16 or better)')
  .argument('<text>', 'text file: what the model will be used for, not the evaluation set')
  .requiredOption('-o, --output <file>', 'where to write the imatrix')
  .addOption(new Option('-c, --ctx-size <n>', 'tokens per chunk').argParser(intArg).default(512))
  .addOption(new Option('--chunks <n>', 'most chunks').argParser(intArg))
  .addOption(new Option('-t, --threads <n>', 'threads').argParser(intArg))
  .action(async (model, text, opts) => (await import('./quantize.js')).imatrixCommand(model, text, opts));

program
  .command('synth')
  .description("write a random-weight GGUF with a real model's exact shape, for speed and memory measurements")
  .requiredOption('--shape <name|json>', 'huozi3.5, tiny, a JSON shape or a .json file')
  .option('--type <type>', 'q4_0, q8_0, q6_k or f16 (per-tensor types as llama-quantize picks them)', 'q4_0')
  .requiredOption('-o, --output <file>', 'where to write the GGUF')
  .addOption(new Option('--layers <n>', 'keep only the first N layers').argParser(intArg))
  .addOption(new Option('--seed <n>', 'random seed').argParser(intArg))
  .action(async (opts) => (await import('./synth.js')).synthCommand(opts));

program
  .command('modelfile')
  .description("print an Ollama Modelfile for a GGUF, with Huozi's template and stop token")
  .option('-m, --model <file>', 'GGUF model (default: the embedded demo model)')
  .option('--system <text>', 'system prompt to bake in')
  .action(async (opts) => (await import('./modelfile.js')).modelfile(opts));

program
  .command('rpc-server')
  .description("llama.cpp's RPC server: lend this machine's devices to loadModel({ rpcServers }) or llama.cpp's --rpc (no authentication: trusted networks only)")
  .option('-H, --host <address>', 'IPv4 address to listen on; anything but loopback is reachable by anyone on the network', '127.0.0.1')
  .addOption(new Option('-p, --port <n>', 'port').argParser(intArg).default(50052))
  .addOption(new Option('-t, --threads <n>', 'threads for the CPU device (default: half the cores)').argParser(intArg))
  .option('-c, --cache [dir]', 'cache large tensors on disk (default folder: $LLAMA_CACHE or ~/.cache/llama.cpp, then rpc/)')
  .option('-d, --device <names>', 'devices to serve, comma-separated (default: every GPU, else the CPU)')
  .action(async (opts) => (await import('./rpc-server.js')).rpcServerCommand(opts));

program
  .command('serve')
  .description('an OpenAI-compatible server (chat/completions, completions, models) with parallel slots and a web chat page')
  .addOption(new Option('-m, --model <file>', 'GGUF model (default: the embedded huozi-tiny demo model)'))
  .option('-H, --host <address>', 'address to listen on (loopback by default: other machines cannot connect)', '127.0.0.1')
  .addOption(new Option('-p, --port <n>', 'port').argParser(intArg).default(8000))
  .addOption(new Option('--parallel <n>', 'requests generated at once, slots (also -np)').argParser(intArg).default(4))
  .addOption(new Option('-c, --ctx-size <n>', 'KV cache tokens in all, shared out among the slots (default: 4096 per slot)').argParser(intArg))
  .addOption(new Option('-t, --threads <n>', 'CPU threads (default: available cores)').argParser(intArg))
  .addOption(new Option('--ngl, --gpu-layers <n>', 'layers to offload to the GPU, or "max" (also -ngl)').default('max'))
  .option('--rpc <servers>', 'RPC servers for layers, comma-separated host:port')
  .option('--served-model-name <name>', "the model id clients use (default: the file's name)")
  .option('--api-key <key>', 'require Authorization: Bearer <key> (or set HUOZI_API_KEY)')
  .option('--chat-template <file>', 'chat template: auto, huozi, chatml, or a Jinja file (default: auto)')
  .option('--response-role <role>', "role name in chat answers (Huozi's README: 助手)", 'assistant')
  .addOption(new Option('--max-queue <n>', 'requests that may wait for a slot; beyond it, 503').argParser(intArg).default(64))
  .addOption(
    new Option('--stream-interval-ms <ms>', "streaming: send new text at most every <ms> ms; 0 = one event per token (llama-server's way)")
      .argParser(intArg).default(16),
  )
  .option('--no-web', 'do not serve the web chat page at /')
  .option('--allowed-host <name>', 'a Host name clients use besides localhost and IP addresses (repeatable; .example.com for a domain; * = no check)', collect, [])
  .option('--cors-origin <origin>', 'let web pages from this origin call the API, e.g. http://localhost:3000 (repeatable; * = any)', collect, [])
  .addOption(new Option('--headers-timeout-ms <ms>', 'time a client has to send the request headers').argParser(intArg).default(20_000))
  .addOption(new Option('--request-timeout-ms <ms>', 'time a client has to send a whole request (answers may stream longer)').argParser(intArg).default(60_000))
  .addOption(new Option('--keep-alive-timeout-ms <ms>', 'idle keep-alive connections are closed after this').argParser(intArg).default(5000))
  .addOption(new Option('--max-connections <n>', 'open connections in all; more get 503').argParser(intArg).default(512))
  .addOption(new Option('--max-connections-per-address <n>', 'open connections from one address; more get 503 (default: min(128, --max-connections))').argParser(intArg))
  .option('-q, --quiet', 'no request log', false)
  .action(async (opts) => (await import('./serve.js')).serveCommand(opts));

// llama.cpp spells them -ngl and -np; commander allows one-letter short flags only.
const argv = process.argv.map((a) => (a === '-ngl' ? '--ngl' : a === '-np' ? '--parallel' : a));

program.parseAsync(argv).catch((error: Error & { code?: string }) => {
  process.stderr.write(`huozi-gguf: ${error.message}\n`);
  process.exitCode = 1;
});
