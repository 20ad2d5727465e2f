//! A small parser of the C headers' `typedef struct` blocks (kernels/params.h, include/prefk.h):
//! field names and types in order, laid out with C's rules, so tests compare Rust mirrors with the
//! header field by field without libclang.
use std::collections::HashMap;

/// Every `typedef struct Name { ... } Name;` of `src`: (size, [(field, offset)]). Fields are
/// fixed-width integers, `float`, pointers (8 bytes), earlier structs of the same header, or
/// arrays of those sized by a literal or a `#define`; `//` and `/* */` comments are skipped.
pub fn parse_structs(src: &str) -> HashMap<String, (usize, Vec<(String, usize)>)> {
    let mut out: HashMap<String, (usize, Vec<(String, usize)>)> = HashMap::new();
    // A nested struct is aligned as its most aligned field.
    let mut aligns: HashMap<String, usize> = HashMap::new();
    let defines: HashMap<String, usize> = src
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("#define")).then_some(())?;
            let (k, v) = (w.next()?, w.next()?);
            v.parse().ok().map(|v| (k.to_string(), v))
        })
        .collect();
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("typedef struct ") else { continue };
        let name = rest.trim_end_matches('{').trim().to_string();
        let (mut offset, mut align_max, mut fields) = (0usize, 1usize, Vec::new());
        for l in lines.by_ref() {
            let l = l.split("//").next().unwrap().split("/*").next().unwrap().trim();
            if l.starts_with('}') {
                break;
            }
            if l.is_empty() {
                continue;
            }
            let decl = l.trim_end_matches(';');
            let (ty, field) = decl.rsplit_once(' ').unwrap();
            let (field, count) = match field.split_once('[') {
                Some((f, n)) => {
                    let n = n.trim_end_matches(']');
                    (f.to_string(), n.parse().unwrap_or_else(|_| defines[n]))
                }
                None => (field.to_string(), 1),
            };
            let (size, align) = match ty.trim() {
                t if t.ends_with('*') => (8, 8),
                "uint64_t" | "int64_t" => (8, 8),
                "float" | "uint32_t" | "int32_t" => (4, 4),
                other => (out[other].0, aligns[other]),
            };
            offset = offset.div_ceil(align) * align;
            fields.push((field, offset));
            offset += size * count;
            align_max = align_max.max(align);
        }
        out.insert(name.clone(), (offset.div_ceil(align_max) * align_max, fields));
        aligns.insert(name, align_max);
    }
    out
}
