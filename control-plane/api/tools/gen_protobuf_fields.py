#!/usr/bin/env python3
"""Generates control-plane/api/schemas/k8s-v1.32-protobuf-fields.json.gz.

The table drives `keel_api::protobuf`, the decoder of Kubernetes protobuf request bodies. For every
protobuf message reachable from a served kind it lists the fields as
`[number, jsonName, type, flags]`:

* `number`, `type` and repeated-ness come from the prost structs of the crates.io crate `k8s-pb`
  (its published `src/**/mod.rs`, `#[prost(..., tag = "N")]` attributes);
* `jsonName` comes from the Go struct's `json:"..."` tag (matched by protobuf field number), checked
  against the v1.32 OpenAPI definitions; without Go information, from the OpenAPI property whose
  lower-cased, underscore-free name equals the prost field's; last, lowerCamelCase of the prost name;
* `flags` say how Go's JSON encoder treats zero values, which the decoder must reproduce because
  gogo-protobuf writes every non-pointer field, even empty ones: `r` repeated, `p` Go pointer
  (present on the wire = set, keep even when zero), `k` non-pointer without `omitempty` (Go writes
  the zero value), `i` embedded struct whose fields Go's JSON inlines into the parent (`jsonName`
  is then empty). Neither `p` nor `k`: a zero value is dropped.

`type` is `string`, `bool`, `int32`, `int64`, `uint32`, `uint64`, `double`, `float`, `bytes`,
`msg:<full.proto.Name>`, or `map:<value type>` (keys are always strings in Kubernetes).

`kinds` maps `group/version/Kind` (group empty for core) to a message name, from the definitions'
`x-kubernetes-group-version-kind`.

Usage (inputs are read-only; nothing is downloaded):

    gen_protobuf_fields.py --k8s-pb ~/.cargo/registry/src/*/k8s-pb-0.9.0/src \
        --go-api <kubernetes/api checkout> --go-apimachinery <kubernetes/apimachinery checkout> \
        --definitions control-plane/api/schemas/k8s-v1.32-definitions.json.gz \
        --out control-plane/api/schemas/k8s-v1.32-protobuf-fields.json.gz

`k8s-pb` is obtained with `cargo fetch` in a throwaway project that depends on `k8s-pb = "=0.9.0"`;
the Go trees are `git archive`s of the kubernetes/api and kubernetes/apimachinery tags matching the
Kubernetes version k8s-pb was generated from (v0.35.x for k8s-pb 0.9.0; the committed table
used v0.35.7: `git archive v0.35.7 | tar -x -C DIR` in each repository).
"""

import argparse
import gzip
import json
import os
import re
import sys

PROST_ATTR = re.compile(r'#\[prost\((.*)\)\]\s*$')
STRUCT = re.compile(r'^pub struct (\w+) \{')
FIELD = re.compile(r'^\s*pub (r#)?(\w+):\s*(.*)$')
SCALARS = {'string', 'bool', 'int32', 'int64', 'uint32', 'uint64', 'double', 'float', 'bytes',
           'sint32', 'sint64', 'fixed32', 'fixed64', 'sfixed32', 'sfixed64'}


def proto_package(module_path):
    """`api/apps/v1` -> `k8s.io.api.apps.v1` (k8s-pb mirrors the proto package layout)."""
    return 'k8s.io.' + module_path.replace('/', '.')


def resolve_path(rust_type, module):
    """Resolves `super::super::core::v1::PodSpec` relative to `module` (list of components)."""
    parts = rust_type.split('::')
    mod = list(module)
    while parts and parts[0] == 'super':
        mod.pop()
        parts.pop(0)
    return 'k8s.io.' + '.'.join(mod + parts)


def innermost(rust_type):
    """The message path inside `Option<..>`, `Vec<..>` or as a map's value type."""
    t = re.sub(r'\s+', '', rust_type).rstrip(',')
    for wrapper in ('::core::option::Option<', '::prost::alloc::vec::Vec<', '::prost::alloc::boxed::Box<'):
        while t.startswith(wrapper):
            t = t[len(wrapper):-1].rstrip(',')
    if t.startswith('::prost::alloc::collections::BTreeMap<'):
        inner = t[len('::prost::alloc::collections::BTreeMap<'):-1]
        key, _, value = inner.partition(',')
        return innermost(value)
    return t.rstrip(',')


def parse_k8s_pb(src):
    """-> {message: [(tag, prost_name, type, repeated)]}"""
    messages = {}
    for root, _dirs, files in os.walk(src):
        if 'mod.rs' not in files:
            continue
        rel = os.path.relpath(root, src)
        if rel == '.':
            continue
        module = rel.split(os.sep)
        with open(os.path.join(root, 'mod.rs'), encoding='utf-8') as f:
            lines = f.read().split('\n')
        current = None
        i = 0
        while i < len(lines):
            line = lines[i]
            m = STRUCT.match(line)
            if m:
                current = proto_package('/'.join(module)) + '.' + m.group(1)
                messages[current] = []
                i += 1
                continue
            if line.startswith('}'):
                current = None
            m = PROST_ATTR.match(line.strip())
            if m and current:
                attr = m.group(1)
                # the field declaration may span several lines
                j = i + 1
                decl = lines[j]
                depth = decl.count('<') - decl.count('>')
                while depth > 0 or not decl.rstrip().endswith(','):
                    j += 1
                    decl += lines[j]
                    depth = decl.count('<') - decl.count('>')
                fm = FIELD.match(decl)
                if not fm:
                    sys.exit(f'cannot parse field declaration in {current}: {decl!r}')
                name, rust_type = fm.group(2), fm.group(3)
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                repeated = re.search(r'\brepeated\b', attr) is not None
                kind = attr.split(',')[0].strip()
                if kind.startswith('btree_map') or kind.startswith('map') or kind.startswith('hash_map'):
                    value_kind = re.search(r'map = "(\w+), (\w+)"', attr).group(2)
                    if value_kind == 'message':
                        ty = 'map:msg:' + resolve_path(innermost(rust_type), module)
                    else:
                        ty = 'map:' + value_kind
                    repeated = False
                elif kind == 'message':
                    ty = 'msg:' + resolve_path(innermost(rust_type), module)
                elif kind.startswith('bytes'):
                    ty = 'bytes'
                elif kind in SCALARS:
                    ty = kind
                else:
                    sys.exit(f'unsupported prost attribute in {current}.{name}: {attr}')
                messages[current].append((tag, name, ty, repeated))
                i = j + 1
                continue
            i += 1
    return messages


GO_STRUCT = re.compile(r'^type (\w+) struct \{')
GO_FIELD = re.compile(r'^\s*([^`/]+?)\s*`([^`]*)`')


def parse_go_tree(root, package_of_dir):
    """-> {(message, number): (json_name, pointer, omitempty)} from Go `types.go`-style files."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        package = package_of_dir(os.path.relpath(dirpath, root))
        if package is None:
            continue
        for fn in files:
            if not fn.endswith('.go') or fn.endswith('_test.go') or 'generated' in fn:
                continue
            with open(os.path.join(dirpath, fn), encoding='utf-8') as f:
                current = None
                for line in f:
                    m = GO_STRUCT.match(line)
                    if m:
                        current = package + '.' + m.group(1)
                        continue
                    if line.startswith('}'):
                        current = None
                        continue
                    if current is None:
                        continue
                    fm = GO_FIELD.match(line)
                    if not fm:
                        continue
                    decl, tags = fm.group(1).split(), fm.group(2)
                    pm = re.search(r'protobuf:"[a-z0-9]+,(\d+),', tags)
                    jm = re.search(r'json:"([^"]*)"', tags)
                    if not pm or not jm:
                        continue
                    go_type = decl[-1]
                    json_opts = jm.group(1).split(',')
                    embedded = len(decl) == 1
                    inline = 'inline' in json_opts[1:] or (embedded and not json_opts[0])
                    out[(current.lower(), int(pm.group(1)))] = (
                        json_opts[0], go_type.startswith('*'), 'omitempty' in json_opts[1:], inline)
    return out


def go_api_package(rel):
    parts = rel.split(os.sep)
    if len(parts) == 2 and re.fullmatch(r'v\d+((alpha|beta)\d+)?', parts[1]):
        return 'k8s.io.api.' + '.'.join(parts)
    return None


def go_apimachinery_package(rel):
    if rel.startswith('pkg' + os.sep):
        return 'k8s.io.apimachinery.' + rel.replace(os.sep, '.')
    return None


def definition_to_message(name):
    """`io.k8s.api.apps.v1.Deployment` -> `k8s.io.api.apps.v1.Deployment`."""
    assert name.startswith('io.k8s.'), name
    return 'k8s.io.' + name[len('io.k8s.'):].replace('-', '_')


def norm(name):
    """`x-kubernetes-list-type`, `x_kubernetes_list_type`, `$ref`, `ref` -> comparable keys."""
    return re.sub(r'[^a-z0-9]', '', name.lower())


def lower_camel(snake):
    head, *rest = snake.split('_')
    return head + ''.join(p[:1].upper() + p[1:] for p in rest)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--k8s-pb', required=True)
    ap.add_argument('--go-api', required=True)
    ap.add_argument('--go-apimachinery', required=True)
    ap.add_argument('--definitions', required=True)
    ap.add_argument('--out', required=True)
    args = ap.parse_args()

    messages = parse_k8s_pb(args.k8s_pb)
    go = parse_go_tree(args.go_api, go_api_package)
    go.update(parse_go_tree(args.go_apimachinery, go_apimachinery_package))
    with gzip.open(args.definitions, 'rt', encoding='utf-8') as f:
        definitions = json.load(f)['$defs']
    # k8s-pb's names differ from upstream's in case only (`IscsiVolumeSource` for
    # `ISCSIVolumeSource`), so every join below is on lower-cased full names.
    props = {definition_to_message(k).lower(): set((v.get('properties') or {}).keys())
             for k, v in definitions.items()}
    by_lower = {m.lower(): m for m in messages}

    kinds = {}
    for name, d in definitions.items():
        for gvk in d.get('x-kubernetes-group-version-kind', []):
            msg = by_lower.get(definition_to_message(name).lower())
            if msg:
                kinds[f"{gvk['group']}/{gvk['version']}/{gvk['kind']}"] = msg

    # Only messages reachable from a kind (plus the envelope) go into the table.
    wanted, todo = set(), list(kinds.values()) + ['k8s.io.apimachinery.pkg.runtime.Unknown']
    while todo:
        m = todo.pop()
        if m in wanted:
            continue
        if m not in messages:
            sys.exit(f'message {m} is referenced but not defined by k8s-pb')
        wanted.add(m)
        for _tag, _name, ty, _rep in messages[m]:
            if 'msg:' in ty:
                todo.append(ty.split('msg:', 1)[1])

    stats = {'go': 0, 'openapi': 0, 'camel': 0, 'mismatch': 0}
    table = {}
    for m in sorted(wanted):
        fields = []
        for tag, name, ty, repeated in messages[m]:
            info = go.get((m.lower(), tag))
            known = props.get(m.lower(), set())
            by_norm = {norm(p): p for p in known}
            if info and info[3]:
                json_name = ''
                stats['go'] += 1
            elif info and info[0]:
                json_name = info[0]
                stats['go'] += 1
                if known and json_name not in known:
                    stats['mismatch'] += 1
            elif norm(name) in by_norm:
                json_name = by_norm[norm(name)]
                stats['openapi'] += 1
            else:
                json_name = lower_camel(name)
                stats['camel'] += 1
            flags = ''
            if repeated:
                flags += 'r'
            if info and info[3]:
                flags += 'i'
            elif info and info[1]:
                flags += 'p'
            elif info and not info[2]:
                flags += 'k'
            fields.append([tag, json_name, ty, flags])
        table[m] = fields

    out = {
        'source': 'derived from k8s-pb 0.9.0 (field numbers, types) and kubernetes/api, '
                  'kubernetes/apimachinery v0.35.7 (JSON names, pointer/omitempty); Apache-2.0',
        'kinds': dict(sorted(kinds.items())),
        'messages': table,
    }
    data = json.dumps(out, separators=(',', ':'), sort_keys=False).encode()
    with open(args.out, 'wb') as f:
        # mtime=0 keeps the output byte-for-byte reproducible
        with gzip.GzipFile(filename='', fileobj=f, mode='wb', mtime=0, compresslevel=9) as gz:
            gz.write(data)
    print(f'{len(table)} messages, {len(kinds)} kinds, json names: {stats}', file=sys.stderr)


if __name__ == '__main__':
    main()
