#!/usr/bin/env python3
"""wgmma register hazards in sm_90a SASS (`cuobjdump -sass` text), for what no emulator can see.

ptxas allocates the registers of an RS wgmma's A operand; once (ptxas 13.0, the attention v3 at
d = 64) it handed fragments that the source carried around a loop to another value, so the next
iteration's HGMMA read the wrong matrix. For every function this walks the control-flow graph
backwards from each HGMMA and reports (exit status 1):
  1. an A register whose last writer, on some path (the loop back-edge included), is not this
     iteration's LDSM or F2FP (the fragment loads and the packing of P / dS), is predicated, or
     is missing (the function entry reaches the HGMMA without a write);
  2. an HGMMA with no WARPGROUP.ARRIVE before it on some path, or an A / accumulator register
     written between that ARRIVE and the HGMMA;
  3. an A or accumulator register read or written by a non-HGMMA instruction while the HGMMA is
     in flight (before the WARPGROUP.DEPBAR that waits for it);
  4. an F2FP reading a register another F2FP of the same packing sequence overwrote.
A heuristic reader of SASS (destination widths from opcode suffixes; predicated writes do not
kill; CALLs summarised by their callee's writes), written for the review of the v3 kernels and
checked against the clobbered build (flagged) and planted faults. Used by tests/sass_budget.rs.
Usage: sass_wgmma_hazards.py [-v] FILE...
"""
import re, sys
from collections import defaultdict

LINE = re.compile(r'^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*/\* 0x[0-9a-f]+ \*/\s*$')

class Ins:
    def __init__(s, addr, text):
        s.addr, s.text = addr, text
        m = re.match(r'(@!?U?P[T0-9]+)\s+(.*)$', text)
        s.pred = m.group(1) if m else None
        body = m.group(2) if m else text
        body = body.rstrip(' ;')
        parts = body.split(None, 1)
        s.op = parts[0]
        s.ops = [o.strip() for o in parts[1].split(',')] if len(parts) > 1 else []
        s.base = s.op.split('.')[0]

def regs_of(tok):
    return [int(x) for x in re.findall(r'(?<![U\w])R(\d+)', tok)]

NODST = {'ST', 'STG', 'STS', 'STL', 'RED', 'BRA', 'BAR', 'EXIT', 'BSSY', 'BSYNC', 'WARPSYNC', 'NOP', 'DEPBAR',
         'LDGDEPBAR', 'MEMBAR', 'FENCE', 'WARPGROUP', 'CALL', 'RET', 'ISETP', 'FSETP', 'PLOP3', 'LDGSTS', 'ERRBAR',
         'CCTL', 'R2UR', 'S2UR', 'VOTEU', 'BPT', 'SYNCS', 'UTMALDG', 'ARRIVES'}
PREDONLY = {'ISETP', 'FSETP', 'PLOP3', 'DSETP', 'HSETP2', 'VOTE'}

def width(ins):
    op = ins.op
    if ins.base == 'HGMMA':
        n = int(re.match(r'HGMMA\.64x(\d+)x', op).group(1)); return n // 2
    if ins.base == 'LDSM':
        m = re.search(r'M88\.(\d)', op); return int(m.group(1)) if m else 1
    if '.128' in op: return 4
    if '.64' in op or op.startswith('IMAD.WIDE'): return 2
    if ins.base == 'CS2R' and '.32' not in op: return 2
    return 1

def writes(ins):
    """Set of R registers (maybe) written."""
    if ins.base in NODST or ins.base.startswith('U') and ins.base not in ('UMOV',) and False:
        return set()
    if ins.base.startswith('U') or ins.base in NODST: return set()
    if not ins.ops: return set()
    ops = list(ins.ops)
    if ins.base in PREDONLY: return set()
    # skip leading predicate destinations (SHFL PT, R5, ...; LOP3.LUT P0, RZ, ...)
    i = 0
    while i < len(ops) and re.fullmatch(r'!?U?P[T0-9]+', ops[i]): i += 1
    if i >= len(ops): return set()
    r = regs_of(ops[i])
    if not r or ops[i].startswith('['): return set()
    w = width(ins)
    return set(range(r[0], r[0] + w))

def reads(ins):
    out = set()
    if ins.base in ('BRA', 'EXIT', 'BAR', 'NOP'):
        return out
    ops = list(ins.ops)
    i = 0
    while i < len(ops) and re.fullmatch(r'!?U?P[T0-9]+', ops[i]): i += 1
    srcs = ops if (ins.base in NODST or ins.base in PREDONLY) else ops[i + 1:]
    if ins.base == 'HGMMA':
        srcs = ops[1:]
    w = width(ins)
    for t in srcs:
        for m in re.finditer(r'(?<![U\w])R(\d+)(\.64)?', t):
            b = int(m.group(1)); n = 2 if m.group(2) else 1
            if ins.base in ('ST', 'STG', 'STS', 'STL', 'RED') and not t.startswith('[') and 'desc' not in t: n = w
            if ins.base == 'HGMMA': n = w if t == srcs[-1] else (4 if t == srcs[0] else 1)
            out |= set(range(b, b + n))
    return out

def parse(path):
    funcs = {}
    cur = None
    for ln in open(path):
        m = re.search(r'Function : (\S+)', ln)
        if m: cur = m.group(1); funcs[cur] = []; continue
        m = LINE.match(ln)
        if m and cur: funcs[cur].append(Ins(int(m.group(1), 16), m.group(2)))
    return funcs

def build_cfg(ins):
    idx = {x.addr: i for i, x in enumerate(ins)}
    succ = defaultdict(list)
    callw = {}
    # call summaries: callee = from target to RET
    for i, x in enumerate(ins):
        if x.base == 'CALL':
            t = int(re.search(r'0x([0-9a-f]+)', x.ops[-1]).group(1), 16)
            w = set(); j = idx[t]
            while ins[j].base != 'RET':
                w |= writes(ins[j]); j += 1
            callw[i] = w
    for i, x in enumerate(ins):
        if x.base == 'BRA':
            t = int(re.search(r'0x([0-9a-f]+)', x.ops[-1]).group(1), 16)
            succ[i].append(idx[t])
            if x.pred: succ[i].append(i + 1)
        elif x.base in ('EXIT', 'RET'):
            if x.pred: succ[i].append(i + 1)
        elif i + 1 < len(ins):
            succ[i].append(i + 1)
    pred = defaultdict(list)
    for i, ss in succ.items():
        for s in ss: pred[s].append(i)
    return succ, pred, callw

def W(ins, callw, i):
    return callw[i] if i in callw else writes(ins[i])

def last_writers(ins, pred, callw, start, reg):
    """Instructions that may be the last writer of `reg` before instruction `start` (backward walk).
    Returns {writer_index: crossed_back_edge(bool)} and whether function entry is reachable w/o a write."""
    found, seen, entry = {}, set(), False
    stack = [(p, p >= start) for p in pred[start]]
    if start == 0: entry = True
    while stack:
        i, crossed = stack.pop()
        if (i, crossed) in seen: continue
        seen.add((i, crossed))
        if reg in W(ins, callw, i):
            found[i] = found.get(i, False) or crossed
            if not ins[i].pred: continue   # unconditional write kills
        if i == 0: entry = True
        stack.extend((p, crossed or p >= i) for p in pred[i])
    return found, entry

def main(path, verbose=False):
    total = 0
    for fn, ins in parse(path).items():
        succ, pred, callw = build_cfg(ins)
        problems = []
        if verbose:
            print(f'=== {fn}: {len(ins)} instrs, {sum(1 for x in ins if x.base=="HGMMA")} HGMMA')
        hg = [i for i, x in enumerate(ins) if x.base == 'HGMMA']
        for i in hg:
            x = ins[i]
            n = width(x)
            d0 = regs_of(x.ops[0])[0]
            acc = set(range(d0, d0 + n))
            a_reg = regs_of(x.ops[1])[0] if re.fullmatch(r'R\d+', x.ops[1]) else None
            A = set(range(a_reg, a_reg + 4)) if a_reg is not None else set()
            desc = f'{x.addr:05x} {x.text}'
            # (1) reaching defs of A regs
            if A:
                for r in sorted(A):
                    f, entry = last_writers(ins, pred, callw, i, r)
                    ws = ', '.join(f'{ins[j].addr:04x}:{ins[j].op}' + ('(pred)' if ins[j].pred else '') +
                                   ('(via back-edge)' if f[j] else '') for j in sorted(f))
                    bad = entry or len(f) != 1 or any(ins[j].pred or f[j] for j in f) or \
                        not {ins[j].base for j in f} <= {'LDSM', 'F2FP'}
                    if verbose:
                        print(f'  A R{r:<3} of {x.addr:04x}: last writers [{ws}]{" ENTRY-REACHES" if entry else ""}{"  <-- CHECK" if bad else ""}')
                    if bad: problems.append(f'A R{r} at {x.addr:04x}: {ws}')
            # (2) ARRIVE before HGMMA with no non-HGMMA write to A/acc (or read of acc) in between
            stack, seen, ok = list(pred[i]), set(), True
            while stack:
                j = stack.pop()
                if j in seen: continue
                seen.add(j)
                y = ins[j]
                if y.op == 'WARPGROUP.ARRIVE': continue
                if y.base == 'HGMMA':
                    stack.extend(pred[j]); continue
                if y.op.startswith('WARPGROUP.DEPBAR') or j == 0:
                    ok = False; problems.append(f'no ARRIVE before {x.addr:04x} (path reaches {y.addr:04x})'); continue
                if W(ins, callw, j) & (A | acc):
                    ok = False; problems.append(f'{y.addr:04x} {y.text} writes A/acc of {x.addr:04x} after ARRIVE'); continue
                stack.extend(pred[j])
            # (3) from HGMMA forward to DEPBAR: no non-HGMMA touches acc or A
            stack, seen = list(succ[i]), set()
            while stack:
                j = stack.pop()
                if j in seen: continue
                seen.add(j)
                y = ins[j]
                if y.op.startswith('WARPGROUP.DEPBAR'):
                    continue
                if y.base == 'HGMMA':
                    # a later HGMMA in the same batch may legitimately chain on acc; flag writes of A by it
                    if width(y) and set(range(regs_of(y.ops[0])[0], regs_of(y.ops[0])[0] + width(y))) & A and \
                            regs_of(y.ops[0])[0] != d0:
                        problems.append(f'HGMMA {y.addr:04x} overwrites A regs of in-flight {x.addr:04x}')
                    stack.extend(succ[j]); continue
                touched = (W(ins, callw, j) | reads(y)) & (acc | A)
                if touched:
                    problems.append(f'{y.addr:04x} {y.text} touches {sorted(touched)} of in-flight {x.addr:04x}')
                if y.base in ('EXIT',) and not y.pred:
                    problems.append(f'EXIT {y.addr:04x} before DEPBAR after {x.addr:04x}')
                    continue
                stack.extend(succ[j])
            if verbose: print('  ', desc)
        # (4) F2FP sources must not be outputs of another F2FP of the same packing sequence
        for i, x in enumerate(ins):
            if x.base != 'F2FP': continue
            for r in reads(x):
                f, entry = last_writers(ins, pred, callw, i, r)
                if entry or any(ins[j].base == 'F2FP' for j in f):
                    problems.append(f'F2FP {x.addr:04x} reads R{r} last written by F2FP ' +
                                    ','.join(f'{ins[j].addr:04x}' for j in f if ins[j].base == 'F2FP'))
        for p in problems:
            print(f'{fn}: {p}')
        total += len(problems)
    return total


if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if a != '-v']
    found = sum(main(p, '-v' in sys.argv[1:]) for p in args)
    print(f'{found} wgmma register hazard(s) in {len(args)} file(s)')
    sys.exit(1 if found else 0)
