#!/usr/bin/env python
"""Find (and fix) exported signatures whose parameters lack their own docments.

fastcore's `docments` (and so nbdev's `show_doc`) maps a comment to the *last* parameter on its line, and a
comment on the line of the return annotation to `return`. A signature such as

    def codes_dir(cfg:Config, enc_id:str, variant:str, config:str)->Path: # run configuration, encoder id, variant, SAE config name

therefore documents only the return value. This tool looks at every public function and every public method of a
public class (plus `__init__`) defined at the top level of a `#| export` / `#| exports` cell and reports each one
whose public parameters (all but a leading `self`/`cls`) do not each have a comment of their own.

    .venv/bin/python tools/docments.py [--check] [notebooks...]   # report offenders, exit 1 if any (default mode)
    .venv/bin/python tools/docments.py --write [notebooks...]     # rewrite what can be fixed, report the rest
    .venv/bin/python tools/docments.py --diff [notebooks...]      # show the rewrite as diffs, write nothing

Without notebooks, all `nbs/*.ipynb` of the repository are processed.

Rewriting (only when it is unambiguous):

* a comment after a line holding several parameters is split on commas that are not inside brackets or quotes;
  when the number of pieces equals the number of public parameters on that line, the pieces are given to them in
  order and every parameter goes on its own line;
* a comment after `)->T:` (or after the closing `)` of a signature without annotation) is given to the parameters
  when none of them has a doc of its own and the pieces match the number of public parameters; it is then removed
  from the return (no return doc is invented);
* anything else (piece count differs, a parameter without any comment, a parameter spanning lines, code after the
  colon on the signature line, ...) is left untouched and listed for manual handling.

Only the lines from `def` to the colon that ends the signature change; decorators, docstrings and bodies stay
byte-identical, as do cell ids and metadata. Notebooks are read and written with nbformat (version 4) in the layout
`nbdev_clean` writes (JSON, indent 1, sorted keys, a final newline).

`--write` exits 1 when something is left for manual handling, 0 otherwise.
"""
from __future__ import annotations

import argparse, ast, difflib, io, re, sys, tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(\S+)')
_EXPORTS = {'export', 'exports'}
_OPEN, _CLOSE = '([{', ')]}'


# ---------------------------------------------------------------------------------------------------------------
# Cells and functions
# ---------------------------------------------------------------------------------------------------------------

def is_export_cell(src:str)->bool:   # True if a leading `#| export`/`#| exports` directive marks the cell
    "Whether the code cell `src` is exported to the public module (`#| exporti` is internal and not checked)."
    for line in src.splitlines():
        if not line.strip(): continue
        m = _DIRECTIVE.match(line)
        if not m: return False
        if m.group(1).rstrip(':').lower() in _EXPORTS: return True
    return False


def public_defs(tree:ast.Module):   # yields (qualified name, def node, is_method)
    "Public top-level functions, and public methods (plus `__init__`) of public top-level classes."
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith('_'):
            yield node.name, node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith('_'):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        not sub.name.startswith('_') or sub.name == '__init__'):
                    yield f'{node.name}.{sub.name}', sub, True


def split_pieces(comment:str)->list[str]:   # the text after `#`
    "Split a packed comment on commas that are not inside brackets, quotes or backticks."
    pieces, cur, depth, quote = [], '', 0, None
    for ch in comment:
        if quote:
            if ch == quote: quote = None
        elif ch in '`"': quote = ch
        elif ch in _OPEN: depth += 1
        elif ch in _CLOSE: depth = max(depth - 1, 0)
        elif ch == ',' and depth == 0:
            pieces.append(cur.strip()); cur = ''; continue
        cur += ch
    pieces.append(cur.strip())
    return pieces if all(pieces) else []   # an empty piece ("a,,b" or a trailing comma) is not a clean split


def comment_text(tok:str)->str:   # a COMMENT token
    "The comment without `#` and surrounding blanks (what fastcore's docments keeps)."
    return tok.lstrip()[1:].strip()


@dataclass
class Item:
    "One comma-separated entry between the parentheses of a signature."
    text: str              # the source of the entry, without its comma
    line: int              # 1-based line (in the cell) where it starts
    end_line: int          # line where it ends
    name: str|None = None  # parameter name (None for the `*` and `/` markers)
    public: bool = True    # False for a leading self/cls and for markers
    doc: str|None = None   # the docment the parameter has now (by fastcore's rules), own docs only
    new_doc: str|None = None


@dataclass
class Finding:
    nb: str
    cell_id: str
    name: str
    reasons: list[str] = field(default_factory=list)
    fixable: bool = False
    manual: list[str] = field(default_factory=list)
    new_lines: list[str]|None = None  # replacement for the signature lines
    span: tuple[int, int]|None = None  # (first, last) 1-based lines replaced


class Sig:
    "Token-level view of the signature of one function definition inside a cell."

    def __init__(self, node, lines:list[str], toks:list[tokenize.TokenInfo], is_method:bool):
        self.node, self.lines, self.is_method = node, lines, is_method
        self.first = min([d.lineno for d in node.decorator_list] + [node.lineno])
        i = next(k for k, t in enumerate(toks) if t.start[0] == node.lineno and t.type == tokenize.NAME and t.string == 'def')
        while not (toks[i].type == tokenize.OP and toks[i].string == '('): i += 1
        self.open_tok = toks[i]
        depth, j, items, cur = 0, i, [], []
        while True:
            t = toks[j]
            if t.type == tokenize.OP and t.string in _OPEN: depth += 1
            if t.type == tokenize.OP and t.string in _CLOSE:
                depth -= 1
                if depth == 0: break
            if j > i:
                if depth == 1 and t.type == tokenize.OP and t.string == ',':
                    items.append(cur); cur = []
                elif t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                    cur.append(t)
            j += 1
        if cur: items.append(cur)
        self.close_tok = toks[j]
        depth, j = 0, j + 1
        while True:
            t = toks[j]
            if t.type == tokenize.OP and t.string in _OPEN: depth += 1
            if t.type == tokenize.OP and t.string in _CLOSE: depth -= 1
            if depth == 0 and t.type == tokenize.OP and t.string == ':': break
            j += 1
        self.colon_tok = toks[j]
        nxt = toks[j + 1]
        self.body_on_line = nxt.start[0] == self.colon_tok.start[0] and nxt.type not in (tokenize.COMMENT, tokenize.NEWLINE, tokenize.NL)
        self.def_line, self.end_line = node.lineno, self.colon_tok.start[0]
        self.comments = {t.start[0]: t for t in toks if t.type == tokenize.COMMENT and self.first <= t.start[0] <= self.end_line}
        self.items = [self._item(ts) for ts in items]
        self._name_items()

    def _src(self, a, b)->str:
        "Source text between token positions `a` and `b` (row, col), 1-based rows."
        if a[0] == b[0]: return self.lines[a[0] - 1][a[1]:b[1]]
        out = [self.lines[a[0] - 1][a[1]:]] + self.lines[a[0]:b[0] - 1] + [self.lines[b[0] - 1][:b[1]]]
        return ''.join(out)

    def _item(self, ts)->Item:
        return Item(self._src(ts[0].start, ts[-1].end), ts[0].start[0], ts[-1].end[0])

    def _name_items(self):
        a = self.node.args
        params = [*a.posonlyargs, *a.args] + ([a.vararg] if a.vararg else []) + a.kwonlyargs + ([a.kwarg] if a.kwarg else [])
        k = 0
        for it in self.items:
            if it.text in ('*', '/'): it.public = False; continue
            it.name = params[k].arg; k += 1
        first = next((it for it in self.items if it.name), None)
        if first is not None and first.name in ('self', 'cls') and (self.is_method or first is self.items[0]): first.public = False
        if a.kwarg and any(_is_delegates(d) for d in self.node.decorator_list):
            for it in self.items:   # @delegates replaces **kwargs in the signature: it is not documented
                if it.name == a.kwarg.arg: it.public = False

    # fastcore.docments rules: {line: last param on it}, the return annotation's line overrides
    def param_locs(self)->dict[int, str]:
        res = {it.line: it.name for it in self.items if it.name}
        if self.node.returns is not None: res[self.node.returns.lineno] = 'return'
        return res

    def docment(self, line:int)->str|None:
        "What fastcore.docments reads for a parameter on `line`."
        locs = self.param_locs()
        if line in self.comments: return comment_text(self.comments[line].string) or None
        line -= 1; res = []
        while line >= self.first and line in self.comments and line not in locs:
            res.append(comment_text(self.comments[line].string)); line -= 1
        return '\n'.join(reversed(res)) or None

    def return_line(self)->int|None:
        return self.node.returns.lineno if self.node.returns is not None else None


def _is_delegates(d)->bool:
    f = d.func if isinstance(d, ast.Call) else d
    return (isinstance(f, ast.Name) and f.id == 'delegates') or (isinstance(f, ast.Attribute) and f.attr == 'delegates')


# ---------------------------------------------------------------------------------------------------------------
# Analysis and rewrite of one signature
# ---------------------------------------------------------------------------------------------------------------

def analyse(sig:Sig, finding:Finding):
    "Fill `finding` with what is wrong with `sig`, and with the rewrite when it is unambiguous."
    pub = [it for it in sig.items if it.public]
    if not pub: return
    locs, ret = sig.param_locs(), sig.return_line()
    by_line = {}
    for it in sig.items:
        if it.name: by_line.setdefault(it.line, []).append(it)
    missing = []
    for it in pub:
        pub_on_line = [o for o in by_line[it.line] if o.public]
        own = locs.get(it.line) == it.name and len(pub_on_line) == 1 and it.line == it.end_line
        it.doc = sig.docment(it.line) if own else None
        if it.doc is None: missing.append(it)
    if not missing: return

    # reasons, as docments sees them
    lines_done = set()
    for it in missing:
        if it.line in lines_done: continue
        on_line = [o for o in by_line[it.line] if o.public]
        if it.line == ret and it.line in sig.comments:
            finding.reasons.append(f"comment after the return annotation is read as the return's doc ({', '.join(o.name for o in on_line)} undocumented)")
        elif len(on_line) > 1 and it.line in sig.comments:
            finding.reasons.append(f"one comment packed for {', '.join(o.name for o in on_line)}")
        elif len(on_line) > 1:
            finding.reasons.append(f"{', '.join(o.name for o in on_line)} share a line without a comment")
        elif it.line != it.end_line:
            finding.reasons.append(f"{it.name} spans several lines")
        else:
            finding.reasons.append(f"no comment for {it.name}")
        lines_done.add(it.line)

    # plan: which public params get which new doc, and which lines' comments that uses up
    manual, consumed = [], set()
    if all(it.doc is None for it in pub) and ret is not None and ret in sig.comments and not any(
            l in sig.comments for l in by_line if l != ret):
        # all undocumented, the only comment sits after `)->T:`: meant for the parameters if the pieces match
        pieces = split_pieces(comment_text(sig.comments[ret].string))
        if len(pieces) == len(pub):
            for it, p in zip(pub, pieces): it.new_doc = p
            consumed.add(ret)
        else:
            manual.append(f"comment after the return annotation has {len(pieces) or 'unsplittable'} piece(s) for {len(pub)} parameter(s)")
    else:
        for line, its in sorted(by_line.items()):
            pubs = [o for o in its if o.public]
            if not any(o.doc is None for o in pubs): continue
            if line == ret and line in sig.comments:
                manual.append(f"{', '.join(o.name for o in pubs)}: comment after the return annotation while other parameters have docs")
                continue
            if line not in sig.comments:
                manual.append(f"{', '.join(o.name for o in pubs)}: no comment to distribute")
                continue
            pieces = split_pieces(comment_text(sig.comments[line].string))
            if len(pieces) != len(pubs):
                manual.append(f"{', '.join(o.name for o in pubs)}: comment has {len(pieces) or 'unsplittable'} piece(s) for {len(pubs)} parameter(s)")
                continue
            for it, p in zip(pubs, pieces): it.new_doc = p
            consumed.add(line)
    for it in sig.items:
        if it.end_line != it.line and (it.new_doc is not None or it.doc is None and it.public):
            manual.append(f"{it.name} spans several lines")
    if sig.body_on_line: manual.append("code after the colon on the signature line")
    if manual:
        finding.manual = list(dict.fromkeys(manual)); return
    finding.fixable = True
    finding.span = (sig.def_line, sig.end_line)
    finding.new_lines = rebuild(sig, consumed)


def rebuild(sig:Sig, consumed:set)->list[str]:   # lines whose comment was distributed
    "New text of the lines `def_line..end_line`: untouched lines verbatim, the others one parameter per line."
    lines = sig.lines
    d0, d1 = sig.def_line, sig.end_line
    open_line, close_line = sig.open_tok.start[0], sig.close_tok.start[0]
    items_on = {}
    for it in sig.items: items_on.setdefault(it.line, []).append(it)
    def_indent = re.match(r'\s*', lines[d0 - 1]).group(0)

    def clean(l)->bool:
        its = items_on.get(l, [])
        if l in consumed: return False
        if l == open_line or l == close_line: return not its and open_line != close_line
        if len(its) > 1: return False
        return not (its and its[0].new_doc is not None)

    # indentation and comment column of the parameter lines that stay as they are
    keep = [l for l in range(d0, d1 + 1) if clean(l) and items_on.get(l)]
    indent = re.match(r'\s*', lines[keep[0] - 1]).group(0) if keep else def_indent + '    '
    cols = Counter(sig.comments[l].start[1] for l in keep if l in sig.comments)

    plan = []   # (code, comment) for new lines, or (verbatim line, None) marked by a leading '\0'
    for l in range(d0, d1 + 1):
        if clean(l): plan.append(('\0' + lines[l - 1], None)); continue
        if l == open_line: plan.append((lines[l - 1][:sig.open_tok.end[1]], None))
        for it in items_on.get(l, []):
            doc = it.new_doc if it.new_doc is not None else it.doc if (it.public and len(items_on[l]) == 1) else None
            plan.append((indent + it.text + ',', doc))
        if l == close_line:
            code = def_indent + sig._src(sig.close_tok.start, sig.colon_tok.end)
            rc = None if l in consumed or l not in sig.comments else comment_text(sig.comments[l].string)
            plan.append((code, rc))
    new = [c for c, d in plan if not c.startswith('\0') and d is not None]
    width = max((len(c) for c in new), default=0) + 2
    common = cols.most_common(1)[0][0] if cols else 0
    col = common if common >= width - 1 else width
    out = []
    for c, d in plan:
        if c.startswith('\0'): out.append(c[1:]); continue
        out.append((c.ljust(col) + '# ' + d if d is not None else c) + '\n')
    if not lines[d1 - 1].endswith('\n'): out[-1] = out[-1].rstrip('\n')
    return out


# ---------------------------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------------------------

def process_cell(src:str, nb:str, cell_id:str, problems:list)->tuple[list[Finding], str]:
    "Findings for one exported cell, and its source with every fixable signature rewritten."
    try:
        tree = ast.parse(src)
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (SyntaxError, tokenize.TokenError, IndentationError) as e:
        problems.append(f'{nb} cell {cell_id}: cannot parse ({e.__class__.__name__}: {e}); skipped')
        return [], src
    lines = src.splitlines(keepends=True)
    findings = []
    for name, node, is_method in public_defs(tree):
        f = Finding(nb, cell_id, name)
        analyse(Sig(node, lines, toks, is_method), f)
        if f.reasons: findings.append(f)
    for f in sorted((f for f in findings if f.fixable), key=lambda f: -f.span[0]):   # bottom-up keeps line numbers
        a, b = f.span
        lines[a - 1:b] = f.new_lines
    return findings, ''.join(lines)


def process_nb(path:Path, write:bool, show_diff:bool, problems:list)->list[Finding]:
    import nbformat
    nb = nbformat.read(path, as_version=4)
    out, changed = [], False
    for cell in nb.cells:
        if cell.cell_type != 'code' or not is_export_cell(cell.source): continue
        findings, new = process_cell(cell.source, path.name, cell.get('id', '?'), problems)
        out += findings
        if new != cell.source:
            if show_diff:
                sys.stdout.writelines(difflib.unified_diff(cell.source.splitlines(True), new.splitlines(True),
                                                           f'{path.name} cell {cell.get("id")}', f'{path.name} cell {cell.get("id")} (fixed)'))
                print()
            # re-parse check before anything is written
            ast.parse(new)
            cell.source = new; changed = True
    if write and changed:
        nbformat.validate(nb)
        nbformat.write(nb, str(path), version=4)   # indent 1, sorted keys, final newline: nbdev_clean's layout
    return out


def default_nbs()->list[Path]:
    root = Path(__file__).resolve().parent.parent
    return sorted((root / 'nbs').glob('*.ipynb'))


def main(argv=None)->int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument('--check', action='store_true', help='report functions whose parameters lack own docments (default); exit 1 if any')
    g.add_argument('--write', action='store_true', help='rewrite the signatures that can be fixed unambiguously, report the rest')
    p.add_argument('--diff', action='store_true', help='print the rewrite of each changed cell as a unified diff (writes only with --write)')
    p.add_argument('notebooks', nargs='*', type=Path, help='notebooks to process (default: nbs/*.ipynb)')
    a = p.parse_args(argv)
    nbs = a.notebooks or default_nbs()
    problems, allf = [], []
    for nb in nbs: allf += process_nb(nb, a.write, a.diff, problems)
    for pr in problems: print('warning:', pr, file=sys.stderr)
    fixable = [f for f in allf if f.fixable]
    manual = [f for f in allf if not f.fixable]
    if not a.write:
        for f in allf:
            print(f"{f.nb}\t{f.cell_id}\t{f.name}\t{'; '.join(f.reasons)}\t[{'auto-fixable' if f.fixable else 'manual: ' + '; '.join(f.manual)}]")
        print(f'{len(allf)} function(s) without a docment per parameter: {len(fixable)} fixable with --write, {len(manual)} need manual handling',
              file=sys.stderr)
        return 1 if allf else 0
    for f in fixable: print(f"fixed\t{f.nb}\t{f.cell_id}\t{f.name}")
    for f in manual: print(f"manual\t{f.nb}\t{f.cell_id}\t{f.name}\t{'; '.join(f.manual)}")
    print(f'{len(fixable)} signature(s) rewritten, {len(manual)} left for manual handling', file=sys.stderr)
    return 1 if manual else 0


if __name__ == '__main__': sys.exit(main())
