#!/usr/bin/env python3
"""Mutation fuzzing of frugal's input readers and command line (not a CI test: minutes per round).

Each case mutates one input of a small valid set (a run and its checkpoints, a Hugging Face
GPT-2 and Llama directory, a LoRA adapter, prepared shards and their manifest, tokenizer.json /
tokenizer.model / tokenizer_config.json, a chat template, instruction records, a profile), or
draws command-line values, runs one frugal command, and reports what breaks the rule "bad input
gets one clear line": a signal, a sanitizer report, an uncaught exception, a hang (60 s), an error
of more or fewer than one line, or an output directory left by a refused command. Build an
ASan/UBSan binary to catch what does not crash:

  cmake -S . -B /tmp/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" && cmake --build /tmp/asan --target frugal
  .venv/bin/python tests/fuzz/fuzz_inputs.py /tmp/asan/frugal [CASES_PER_TARGET] [TARGET_REGEX]

SEED=N picks the mutations; failing inputs are kept under /tmp/frugal_fuzz/fail.
"""
import json, os, random, re, shutil, subprocess, sys, time

F = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 30
only = sys.argv[3] if len(sys.argv) > 3 else None
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE, W, FAIL = '/tmp/frugal_fuzz/base', '/tmp/frugal_fuzz/work', '/tmp/frugal_fuzz/fail'
rng = random.Random(int(os.environ.get('SEED', '1')))

TRAIN = ['--train.steps=1', '--train.seq_len=32', '--train.micro_batch=2', '--train.eval_every=0',
         '--train.eval_batches=1', '--data.train=data/train_*.bin', '--data.val=data/val_*.bin']


def setup():
    """The valid inputs every case starts from, made by frugal itself (and the tokenizer fixtures)."""
    if os.path.exists(BASE + '/done'):
        return
    shutil.rmtree(BASE, ignore_errors=True)
    os.makedirs(BASE)
    sh = lambda *a: subprocess.run([F, *a], cwd=BASE, check=True, capture_output=True)
    text = ''.join(open(os.path.join(ROOT, p)).read() for p in ('README.md', 'bench/RESULTS.md'))
    open(BASE + '/corpus.txt', 'w').write(text[:300000])
    open(BASE + '/small.txt', 'w').write(text[:20000])
    sh('prepare', 'corpus.txt', '--out', 'data', '--val-every', '5')
    run = ['--train.steps=2', *TRAIN[1:]]
    sh('train', '--model.preset=tiny', *run, '--run.dir=run', '--run.checkpoint_every=1')
    sh('export', 'run', '--out', 'hf')
    sh('train', '--model.preset=tiny', *run, '--run.dir=prun', '--run.profile=true')
    sh('train', '--model.preset=llama-tiny', *run, '--run.dir=lrun')
    sh('export', 'lrun', '--out', 'hfl')
    shutil.copytree(BASE + '/hfl', BASE + '/hfl3')  # Llama 3.1's rope_scaling, in the older keys
    c = json.load(open(BASE + '/hfl3/config.json'))
    c.pop('rope_parameters', None)
    c['rope_theta'] = 500000.0
    c['rope_scaling'] = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                         'original_max_position_embeddings': 64}
    json.dump(c, open(BASE + '/hfl3/config.json', 'w'), indent=2)
    sh('train', '--init-from', 'hfl', '--lora.rank=4', *run, '--run.dir=lora')
    sh('export', 'lora', '--out', 'hfa')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tests/reference/pretrained_tokenizers.py'), 'train',
                    BASE + '/corpus.txt', BASE + '/toks'], check=True, capture_output=True)
    for name, src in (('tok_llama3', 'llama3'), ('tok_qwen2', 'qwen2'), ('tok_sp', 'sp_hf')):
        shutil.copytree(f'{BASE}/toks/{src}', f'{BASE}/{name}')
        open(f'{BASE}/{name}.jinja', 'w').write(json.load(open(f'{BASE}/{name}/tokenizer_config.json'))['chat_template'])
    records = []
    for i in range(40):
        records.append({'messages': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': f'What is {i}+{i}?'},
                                     {'role': 'assistant', 'content': f'It is {2 * i}.'}]})
        records.append({'prompt': f'Say {i}', 'completion': f' {i} said.'})
    open(BASE + '/chat.jsonl', 'w').write(''.join(json.dumps(r) + '\n' for r in records))
    shutil.copy(BASE + '/run/config.toml', BASE + '/c.toml')
    open(BASE + '/done', 'w').close()


targets = {
    'sample_st': ('run/model.safetensors', ['sample', '--run', 'run', '--tokens', '2', '--prompt', 'ab'], None),
    'sample_toml': ('run/config.toml', ['sample', '--run', 'run', '--tokens', '2', '--prompt', 'ab'], None),
    'resume_state': ('run/ckpt-2/state.json', ['train', '--resume', 'run', '--train.steps=3'], None),
    'resume_rank': ('run/ckpt-2/rank-0.safetensors', ['train', '--resume', 'run', '--train.steps=3'], None),
    'resume_model': ('run/ckpt-2/model.safetensors', ['train', '--resume', 'run', '--train.steps=3'], None),
    'resume_toml': ('run/ckpt-2/config.toml', ['train', '--resume', 'run', '--train.steps=3'], None),
    'init_json': ('hf/config.json', ['train', '--init-from', 'hf', '--run.dir=out'] + TRAIN, 'out'),
    'init_st': ('hf/model.safetensors', ['train', '--init-from', 'hf', '--run.dir=out'] + TRAIN, 'out'),
    'plan_json': ('hf/config.json', ['plan', '-c', 'hf/config.json', '--tokens', '1e6'], None),
    'train_shard': ('data/train_000.bin', ['train', '--model.preset=tiny', '--run.dir=out'] + TRAIN, 'out'),
    'train_manifest': ('data/manifest.json', ['train', '--model.preset=tiny', '--run.dir=out'] + TRAIN, 'out'),
    'train_tok': ('data/frugal_tokenizer.json', ['train', '--model.preset=tiny', '--run.dir=out'] + TRAIN, 'out'),
    'eval_shard': ('data/val_000.bin', ['eval', '--run', 'run'], None),
    'report_metrics': ('run/metrics.jsonl', ['report', 'run'], None),
    'report_summary': ('run/summary.json', ['report', 'run'], None),
    'train_toml': ('c.toml', ['train', '-c', 'c.toml', '--run.dir=out'], 'out'),
    'report_profile': ('prun/profile.json', ['report', 'prun'], None),
    'prep_llama3_json': ('tok_llama3/tokenizer.json', ['prepare', 'corpus.txt', '--tokenizer', 'tok_llama3', '--out', 'pd', '--val-every', '2'], 'pd'),
    'prep_qwen2_json': ('tok_qwen2/tokenizer.json', ['prepare', 'corpus.txt', '--tokenizer', 'tok_qwen2', '--out', 'pd', '--val-every', '2'], 'pd'),
    'prep_sp_json': ('tok_sp/tokenizer.json', ['prepare', 'corpus.txt', '--tokenizer', 'tok_sp', '--out', 'pd', '--val-every', '2'], 'pd'),
    'prep_sp_model': ('tok_sp/tokenizer.model', ['prepare', 'corpus.txt', '--tokenizer', 'tok_sp/tokenizer.model', '--out', 'pd', '--val-every', '2'], 'pd'),
    'prep_cfg': ('tok_llama3/tokenizer_config.json', ['prepare', 'chat.jsonl', '--format', 'jsonl', '--tokenizer', 'tok_llama3', '--out', 'pd', '--val-docs', '4'], 'pd'),
    'prep_chat': ('chat.jsonl', ['prepare', 'chat.jsonl', '--format', 'jsonl', '--tokenizer', 'tok_qwen2', '--out', 'pd', '--val-docs', '4'], 'pd'),
    'jinja_llama3': ('tok_llama3.jinja', ['prepare', 'chat.jsonl', '--format', 'jsonl', '--tokenizer', 'tok_llama3', '--chat-template', 'tok_llama3.jinja', '--out', 'pd', '--val-docs', '4'], 'pd'),
    'jinja_qwen2': ('tok_qwen2.jinja', ['prepare', 'chat.jsonl', '--format', 'jsonl', '--tokenizer', 'tok_qwen2', '--chat-template', 'tok_qwen2.jinja', '--out', 'pd', '--val-docs', '4'], 'pd'),
    'jinja_sp': ('tok_sp.jinja', ['prepare', 'chat.jsonl', '--format', 'jsonl', '--tokenizer', 'tok_sp', '--chat-template', 'tok_sp.jinja', '--out', 'pd', '--val-docs', '4'], 'pd'),
    'init_llama_json': ('hfl/config.json', ['train', '--init-from', 'hfl', '--run.dir=out'] + TRAIN, 'out'),
    'init_llama3_json': ('hfl3/config.json', ['train', '--init-from', 'hfl3', '--run.dir=out'] + TRAIN, 'out'),
    'init_llama_st': ('hfl/model.safetensors', ['train', '--init-from', 'hfl', '--run.dir=out'] + TRAIN, 'out'),
    'lora_cfg': ('hfa/adapter_config.json', ['train', '--init-from', 'hfl', '--lora.init_from=hfa', '--lora.rank=4', '--run.dir=out'] + TRAIN, 'out'),
    'lora_st': ('hfa/adapter_model.safetensors', ['train', '--init-from', 'hfl', '--lora.init_from=hfa', '--lora.rank=4', '--run.dir=out'] + TRAIN, 'out'),
    'sample_lora_cfg': ('lora/adapter/adapter_config.json', ['sample', '--run', 'lora', '--tokens', '2', '--prompt', 'ab'], None),
    'sample_lora_st': ('lora/adapter/adapter_model.safetensors', ['sample', '--run', 'lora', '--tokens', '2', '--prompt', 'ab'], None),
    'export_ck': ('run/ckpt-2/model.safetensors', ['export', 'run', '--out', 'hfx'], 'hfx'),
}


def mutate_bytes(b):
    b = bytearray(b)
    k = rng.randrange(6)
    if k == 0 and b:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif k == 1 and b:  # truncate
        b = b[:rng.randrange(len(b))]
    elif k == 2:  # insert
        p = rng.randrange(len(b) + 1)
        b[p:p] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif k == 3 and b:  # zero a range
        p = rng.randrange(len(b)); n = rng.randint(1, 64)
        b[p:p + n] = bytes(min(n, len(b) - p))
    elif k == 4 and b:  # interesting integers at 8-byte-aligned offsets in the first 64 bytes
        p = rng.randrange(0, min(len(b), 64) // 8 + 1) * 8
        v = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**40])
        b[p:p + 8] = v.to_bytes(8, 'little')
    else:  # duplicate a range
        if b:
            p = rng.randrange(len(b)); n = rng.randint(1, 256)
            b[p:p] = b[p:p + n]
    return bytes(b)


NUMS = ['0', '-1', '1', '-2147483649', '4294967296', '99999999999999999999', '1e308', '-1e308', '1e-320',
        'nan', 'NaN', 'inf', '-inf', '0.5', '3', '65537', '""', 'null', 'true', '[]', '{}', '"x"']


def mutate_text(b):
    s = b.decode('latin-1')
    k = rng.randrange(5)
    nums = list(re.finditer(r'-?\d+(\.\d+)?([eE][-+]?\d+)?', s))
    if k <= 1 and nums:  # replace a number
        m = rng.choice(nums)
        s = s[:m.start()] + rng.choice(NUMS) + s[m.end():]
    elif k == 2:  # delete a line
        lines = s.split('\n')
        if lines:
            del lines[rng.randrange(len(lines))]
        s = '\n'.join(lines)
    elif k == 3:  # replace a string value
        strs = list(re.finditer(r'"[^"\n]*"|\'[^\'\n]*\'', s))
        if strs:
            m = rng.choice(strs)
            s = s[:m.start()] + rng.choice(['""', '"x"', '"../../etc"', '"bf16"', '"F16"', '"I64"', '0', '[1]', '"\\u0000"']) + s[m.end():]
    else:
        return mutate_bytes(b)
    return s.encode('latin-1')


JTOK = ['{%', '%}', '{{', '}}', '{#', '#}', '(', ')', '[', ']', '|', ',', '.', ':', '~', '+', '-', '*', '/', '%', '==', '!=',
        ' if ', ' endif ', ' for ', ' endfor ', ' in ', ' not ', ' and ', ' or ', ' is ', ' set ', ' else ', ' elif ',
        ' loop.index0 ', ' loop.last ', ' namespace(', ' raise_exception(', 'messages[0]', "['content']", '|length',
        '|trim', '|tojson', '|safe', 'none', 'true', "'x'", '"', "'", '0', '-1', '99999999999999999999', '{%-', '-%}',
        ' macro ', ' endmacro ', ' call ', ' filter ', '|map(', '|join(', '|selectattr(', '[::-1]', '[1:]', '**']


def mutate_jinja(b):
    s = b.decode('utf-8', 'replace')
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(4)
        p = rng.randrange(len(s) + 1)
        if k == 0:
            s = s[:p] + rng.choice(JTOK) + s[p:]
        elif k == 1:
            s = s[:p] + s[p + rng.randint(1, 12):]
        elif k == 2:  # remove a whole tag
            tags = [(i, s.find('%}', i)) for i in range(len(s)) if s.startswith('{%', i)]
            tags = [(a, e) for a, e in tags if e > a]
            if tags:
                a, e = rng.choice(tags)
                s = s[:a] + s[e + 2:]
        else:  # duplicate a span (nesting)
            n = rng.randint(1, 200)
            s = s[:p] + s[p:p + n] + s[p:]
    return s.encode('utf-8')


def mutate_safetensors(b):
    if rng.random() < 0.4 or len(b) < 8:
        return mutate_bytes(b)
    n = int.from_bytes(b[:8], 'little')
    hdr = b[8:8 + n]
    try:
        h = json.loads(hdr)
    except Exception:
        return mutate_bytes(b)
    keys = [k for k in h if k != '__metadata__']
    if not keys:
        return mutate_bytes(b)
    key = rng.choice(keys)
    t = h[key]
    k = rng.randrange(7)
    if k == 0:
        t['dtype'] = rng.choice(['F32', 'BF16', 'F16', 'I64', 'U8', 'F8_E4M3', 'X', 5])
    elif k == 1 and t.get('shape'):
        i = rng.randrange(len(t['shape']))
        t['shape'][i] = rng.choice([0, -1, 1, 2**31, 2**62, t['shape'][i] + 1, 'a'])
    elif k == 2:
        t['shape'] = rng.choice([[], [1], [1, 1, 1], None, list(reversed(t.get('shape', [])))])
    elif k == 3:
        o = t['data_offsets']
        i = rng.randrange(2)
        o[i] = rng.choice([0, -1, 2**63, o[i] + 1, o[i] - 1, o[1 - i], 10**30])
    elif k == 4:
        del h[key]
    elif k == 5:
        md = h.setdefault('__metadata__', {})
        mk = rng.choice(list(md) + ['format', 'x'])
        md[mk] = rng.choice(['pt', '{', '', '{"a":1}', 'x', '-1', '0', '99999999999999999999', '1.5', '0-1', '5-2', '0-99999999999', '-3-4'])
    else:
        h[key + '.x'] = dict(t)
    nh = json.dumps(h).encode()
    return len(nh).to_bytes(8, 'little') + nh + b[8 + n:]


def check(label, cmd, out, keep):
    """Runs cmd in the work directory; reports and keeps (name -> bytes) what breaks the rule."""
    env = dict(os.environ, OMP_NUM_THREADS='1', UBSAN_OPTIONS='print_stacktrace=1')
    t0 = time.time()
    try:
        r = subprocess.run([F] + cmd, cwd=W, capture_output=True, timeout=60, env=env)
        rc, o = r.returncode, (r.stdout + r.stderr).decode('utf-8', 'replace')
    except subprocess.TimeoutExpired:
        rc, o = 'timeout', ''
    bad = []
    if rc == 'timeout':
        bad.append('hang')
    elif rc < 0 or rc >= 128:
        bad.append(f'signal/rc {rc}')
    if re.search(r'AddressSanitizer|LeakSanitizer|runtime error:|terminate called|Segmentation|what\(\)|Assertion', o):
        bad.append('sanitizer/abort')
    if rc not in (0, 'timeout'):
        errs = [l for l in o.splitlines() if 'error' in l.lower()]
        if len(errs) != 1:
            bad.append(f'{len(errs)} error lines')
        # prepare refused after tokenizing (the split cannot be made) keeps its shards under a
        # manifest marked incomplete, for a rerun to reuse, and a run that diverged its metrics
        # and checkpoints: not reported
        if out and os.path.exists(os.path.join(W, out)) and not re.search(
                'too few for a validation split|every one of the documents went to validation|the run diverged', o):
            bad.append('output left behind')
    if bad:
        d = f'{FAIL}/{label}'
        os.makedirs(d, exist_ok=True)
        for name, data in keep.items():
            open(os.path.join(d, name), 'wb').write(data)
        open(os.path.join(d, 'out.txt'), 'w').write(f'{cmd}\nrc={rc}\n{o}')
        last = [l for l in o.splitlines() if l.strip()][-3:]
        print(f'{label}: {", ".join(bad)} ({time.time() - t0:.1f}s): {" ".join(cmd)[:200]} :: {" | ".join(last)[:400]}', flush=True)
    return rc


def fresh():
    shutil.rmtree(W, ignore_errors=True)
    shutil.copytree(BASE, W, symlinks=True)


def file_case(name, i):
    rel, cmd, out = targets[name]
    fresh()
    p = os.path.join(W, rel)
    b = open(p, 'rb').read()
    if rel.endswith('.jinja'):
        nb = mutate_jinja(b)
    elif rel.endswith('.safetensors'):
        nb = mutate_safetensors(b)
    elif rel.endswith(('.json', '.toml', '.jsonl')):
        nb = mutate_text(b)
    else:
        nb = mutate_bytes(b)
    open(p, 'wb').write(nb)
    return check(f'{name}-{i}', cmd, out, {os.path.basename(rel): nb})


# ---- the command line: train's --section.key=value overrides and the other commands' options ----
VALS = ['0', '-1', '1', '2', '3', '7', '64', '65536', '2147483647', '2147483648', '-2147483649', '99999999999999999999',
        '1e308', '-1e308', 'nan', 'inf', '-inf', '1e-320', '0.5', '', 'x', 'true', 'false', '[]', '[1,2]', "['a']",
        'none', 'full', 'every:0', 'every:-1', 'every:3', 'bf16', 'fp16', 'f32', 'zero3', 'yafsdp', 'gpt2', 'llama',
        '/nonexistent', 'data/*.bin', '"', "'", '1 2', 'q_proj', 'nf4', '4GiB', '1e3', '0x10', '1_000', '+5', '.5']
OPTS = {
    'sample': (['sample', '--run', 'run'], ['--tokens', '--temperature', '--top-k', '--seed', '--prompt', '--system']),
    'plan': (['plan', '--preset', 'gpt2'], ['--tokens', '--max-hours', '--mfu', '--device', '--seq-len', '--micro-batch',
                                            '--data', '--doc-tokens', '--batch-tokens', '--devices']),
    'prepare': (['prepare', 'small.txt', '--out', 'pd'], ['--val-every', '--val-fraction', '--val-docs', '--shard-tokens',
                                                          '--threads', '--vocab-size', '--field', '--seed', '--tokenizer']),
    'eval': (['eval', '--run', 'run'], ['--batches', '--data']),
}


def cli_case(i, keys):
    fresh()
    if rng.random() < 0.5:
        cmd = ['train', '--model.preset=tiny', '--run.dir=out'] + TRAIN
        cmd += [f'--{rng.choice(keys)}={rng.choice(VALS)}' for _ in range(rng.randint(1, 3))]
        out = 'out'
    else:
        base, opts = OPTS[rng.choice(list(OPTS))]
        cmd = list(base)
        for _ in range(rng.randint(1, 2)):
            cmd += [rng.choice(opts), rng.choice(VALS)]
        out = 'pd' if cmd[0] == 'prepare' else None
    return check(f'cli-{i}', cmd, out, {})


setup()
for name in list(targets) + ['cli']:
    if only and not re.search(only, name):
        continue
    counts = {}
    if name == 'cli':
        keys, section = [], None
        for line in open(BASE + '/run/config.toml'):
            if m := re.match(r'\[(\w+)\]', line):
                section = m.group(1)
            elif (m := re.match(r'(\w+) = ', line)) and section:
                keys.append(f'{section}.{m.group(1)}')
    for i in range(N * (10 if name == 'cli' else 1)):
        rc = str(cli_case(i, keys) if name == 'cli' else file_case(name, i))
        counts[rc] = counts.get(rc, 0) + 1
    print(name, 'exit codes:', counts, flush=True)
