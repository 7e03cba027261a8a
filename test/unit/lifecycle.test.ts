// The one lifecycle of Model, Context and ParallelContext (lib/lifecycle.ts), on plain objects: the order in
// which a dispose runs (children, then what drains, then the release, then the listeners) is what keeps a
// model's weights alive under its contexts.
import { describe, expect, it } from 'vitest';
import { DisposedError } from '../../dist/errors.js';
import { Lifecycle } from '../../dist/lifecycle.js';

describe('Lifecycle', () => {
  it('hands out the native object until disposed, then DisposedError with its message', async () => {
    const life = new Lifecycle({ id: 1 }, 'This context has been disposed');
    expect(life.alive()).toEqual({ id: 1 });
    expect(life.disposed).toBe(false);
    const done = life.dispose(() => undefined);
    // An object without children is disposed at once, before any await.
    expect(life.disposed).toBe(true);
    await done;
    expect(() => life.alive()).toThrow(DisposedError);
    expect(() => life.alive()).toThrow('This context has been disposed');
  });

  it('releases once and runs each listener once, after the release has finished', async () => {
    const events: string[] = [];
    const life = new Lifecycle('native', 'gone');
    life.onDispose(() => events.push('listener'));
    const release = async (native: string) => {
      events.push(`release ${native}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
      events.push('released');
    };
    await Promise.all([life.dispose(release), life.dispose(release)]);
    await life.dispose(release);
    expect(events).toEqual(['release native', 'released', 'listener']);
  });

  it('disposes a parent\'s children first and drains, still alive, before the release', async () => {
    const events: string[] = [];
    const parent = new Lifecycle('model', 'This model has been disposed', { parent: true });
    const child = (name: string) => {
      const life = new Lifecycle(name, 'gone');
      const object = {
        dispose: () =>
          life.dispose(() => {
            events.push(`dispose ${name} (parent alive: ${!parent.disposed})`);
          }),
        onDispose: (listener: () => void) => life.onDispose(listener),
      };
      parent.adopt(object);
      return object;
    };
    const a = child('a');
    child('b');
    // A child disposed on its own is forgotten by its parent.
    await a.dispose();
    events.length = 0;
    await parent.dispose(
      () => {
        events.push('release model');
      },
      async () => {
        events.push(`drain (alive: ${!parent.disposed})`);
      },
    );
    expect(events).toEqual(['dispose b (parent alive: true)', 'drain (alive: true)', 'release model']);
    expect(() => new Lifecycle('x', 'm').adopt(a)).toThrow(TypeError);
  });
});
