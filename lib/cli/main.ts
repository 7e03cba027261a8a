#!/usr/bin/env node
// The `huozi-gguf` command. Each command registers its flags in its own file (lib/cli/<command>.ts) and loads
// what it runs on only inside its action, so that `--help` starts without loading llama.cpp. What is left here
// is global: the list of commands, --version, llama.cpp's spellings, and how errors end.
import { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../binding.js';
import * as chat from './chat.js';
import * as complete from './complete.js';
import * as convert from './convert.js';
import * as embed from './embed.js';
import * as convertLora from './convert-lora.js';
import * as imatrix from './imatrix.js';
import * as inspect from './inspect.js';
import * as modelfile from './modelfile.js';
import * as quantize from './quantize.js';
import * as rpcServer from './rpc-server.js';
import * as serve from './serve.js';
import * as synth from './synth.js';

const pkg = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string };

const program = new Command()
  .name('huozi-gguf')
  .description('Run Huozi 3.5 and other llama.cpp GGUF models from Node.js')
  .version(pkg.version);

// In the order `huozi-gguf --help` lists them; chat is the default command.
for (const command of [chat, complete, embed, inspect, convert, convertLora, quantize, imatrix, synth, modelfile, rpcServer, serve]) command.register(program);

// llama.cpp spells them -ngl, -np, -ncmoe and -ot; commander allows one-letter short flags only.
const SPELLED = new Map([['-ngl', '--ngl'], ['-np', '--parallel'], ['-ncmoe', '--n-cpu-moe'], ['-ot', '--override-tensor']]);
const argv = process.argv.map((a) => SPELLED.get(a) ?? a);

program.parseAsync(argv).catch((error: Error & { code?: string }) => {
  process.stderr.write(`huozi-gguf: ${error.message}\n`);
  process.exitCode = 1;
});
