import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { demoPath, f16Path, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');

describe('huozi-gguf modelfile', () => {
  it("prints an Ollama Modelfile with Huozi's template, stop token and sampling", () => {
    const r = spawnSync(process.execPath, [cli, 'modelfile', '-m', f16Path, '--system', '你是一个智能助手'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const text = r.stdout;
    expect(text).toContain(`FROM ${f16Path}\n`);
    expect(text).toContain('TEMPLATE """{{- range .Messages }}<|beginofutterance|>');
    expect(text).toContain('{{- if eq .Role "system" }}系统');
    expect(text).toContain('{{- else if eq .Role "user" }}用户');
    expect(text).toContain('{{- else if eq .Role "assistant" }}助手');
    expect(text).toContain('{{ .Content }}<|endofutterance|>\n{{ end }}<|beginofutterance|>助手\n"""');
    expect(text).toContain('SYSTEM """你是一个智能助手"""');
    expect(text).toContain('PARAMETER stop "<|endofutterance|>"');
    expect(text).toContain('PARAMETER temperature 0.2');
    expect(text).toContain('PARAMETER repeat_penalty 1.1');
  });

  it('defaults to the embedded demo model', () => {
    const r = spawnSync(process.execPath, [cli, 'modelfile'], { encoding: 'utf8' });
    expect(r.stdout).toContain(`FROM ${demoPath}\n`);
  });
});
