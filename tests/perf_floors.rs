//! The floors table of the README's Performance section, generated here: for every op at its
//! benchmark shape, the bytes it must move and the FLOPs it must do, and the time those take at
//! H100 SXM and H200 nominal peaks (HBM bandwidth; dense bf16 tensor-core rate). A GPU run fills
//! in the measured column (`scripts/gpu-run.sh` measures the copy bandwidth and GEMM rate of the
//! same run, which sit below these nominal peaks). The test fails when the README's table is not
//! the generated one; `PREF_KERNELS_BLESS=1 cargo test --test perf_floors` rewrites it.

/// (name, HBM bytes/s, dense bf16 FLOP/s), nominal from the data sheets.
const GPUS: [(&str, f64, f64); 2] = [("H100 SXM", 3.35e12, 989.4e12), ("H200", 4.8e12, 989.4e12)];

struct Row {
    op: &'static str,
    shape: String,
    bytes: f64,
    flops: f64,
    note: &'static str,
}

const BF16: f64 = 2.0;
const F32: f64 = 4.0;

fn rows() -> Vec<Row> {
    let mut v = Vec::new();
    // Token log-probs over bf16 logits (benches/token_logprobs.rs, the canonical cell): the row
    // pass reads every logit once; per row an i64 target in, logp, lse and two softmax stats out.
    let (n, vocab) = (16384.0, 128256.0);
    let per_row = 8.0 + 4.0 * F32;
    v.push(Row {
        op: "token log-probs forward",
        shape: "bf16 [16384, 128256]".into(),
        bytes: n * vocab * BF16 + n * per_row,
        flops: 0.0,
        note: "one read of the logits",
    });
    v.push(Row {
        op: "token log-probs forward + backward",
        shape: "bf16 [16384, 128256]".into(),
        bytes: 3.0 * n * vocab * BF16 + 2.0 * n * per_row,
        flops: 0.0,
        note: "read; read + write d/dlogits",
    });
    // The DPO step (benches/pref_step.rs): 8 pairs of 1024 tokens = the same 16384 rows, plus the
    // loss stages' per-token f32 reads and writes (logp, ref, mask, dL/dlogp).
    v.push(Row {
        op: "DPO step (log-probs, loss, d/dlogits)",
        shape: "8 pairs x 1024, V 128256, bf16".into(),
        bytes: 3.0 * n * vocab * BF16 + 2.0 * n * per_row + n * 4.0 * F32,
        flops: 0.0,
        note: "the 3 passes of the logits dominate",
    });
    // The GRPO loss stage (benches/group_loss.rs): 24 bytes per token.
    let tokens = 1024.0 * 512.0;
    v.push(Row {
        op: "GRPO loss stage",
        shape: "1024 completions x 512 tokens".into(),
        bytes: 24.0 * tokens,
        flops: 0.0,
        note: "launch-bound: 3-4 launches of ~5 us",
    });
    // The fused LM head at Liger's published cell (issue 25): M 8192, H 4096, V 131072, bf16.
    let (m, h, vv) = (8192.0, 4096.0, 131072.0);
    let gemm = 2.0 * m * h * vv;
    let logits = m * vv * BF16;
    v.push(Row {
        op: "fused LM head forward",
        shape: "M 8192, H 4096, V 131072, bf16".into(),
        bytes: vv * h * BF16 + m * h * BF16 + 2.0 * logits,
        flops: gemm,
        note: "1 GEMM; + chunk logits written and read back (bytes)",
    });
    v.push(Row {
        op: "fused LM head forward + backward",
        shape: "M 8192, H 4096, V 131072, bf16".into(),
        // The forward's GEMM, then the backward's recompute GEMM + dW and dX GEMMs; the chunk
        // logits written and read back by the forward, written, read twice, d/dlogits written in
        // place and read by the two GEMMs in the backward; W read four times, dW (f32) written once.
        bytes: 4.0 * vv * h * BF16 + vv * h * F32 + 4.0 * m * h * BF16 + 8.0 * logits,
        flops: 4.0 * gemm,
        note: "4 GEMMs, the backward recomputing the logits (Liger's CuTe kernel: 50.39 ms on an H100, 8MHV / 50.39 ms = the issue's ~700 effective TFLOP/s)",
    });
    v.push(Row {
        op: "GRPO / DPO step from hidden states",
        shape: "M 8192, H 4096, V 131072, bf16".into(),
        // One GEMM per chunk writes the logits, the row pass and loss read them and write
        // d/dlogits in place, the dW and dX GEMMs read them; W read three times, dW (f32) written.
        bytes: 3.0 * vv * h * BF16 + vv * h * F32 + 3.0 * m * h * BF16 + 5.0 * logits,
        flops: 3.0 * gemm,
        note: "3 GEMMs: the loss is known inside each chunk, no recompute (linear_grpo_step, linear_preference_step; Liger's fused losses also take 3)",
    });
    // Shared-prefix attention (benches/shared_prefix_attention.rs): P 4096, G 8 responses of 512,
    // 32 query heads of d 128 (8 KV heads); FLOPs on the deduplicated allowed pairs.
    let (p, r, g, hq, d) = (4096.0, 512.0, 8.0, 32.0, 128.0);
    let pairs = p * (p + 1.0) / 2.0 + g * (r * p + r * (r + 1.0) / 2.0);
    let tokens = p + g * r;
    let qkvo = tokens * (hq * d * 2.0 + 2.0 * 8.0 * d) * BF16;
    v.push(Row {
        op: "shared-prefix attention forward",
        shape: "P 4096, 8 x 512, Hq 32, Hkv 8, d 128".into(),
        bytes: qkvo,
        flops: 4.0 * d * hq * pairs,
        note: "no prefix K/V copies",
    });
    v.push(Row {
        op: "shared-prefix attention forward + backward",
        shape: "P 4096, 8 x 512, Hq 32, Hkv 8, d 128".into(),
        bytes: 3.0 * qkvo,
        flops: 3.5 * 4.0 * d * hq * pairs,
        note: "x3.5 the forward's FLOPs (FA2's count)",
    });
    // Vocabulary-parallel partials (benches/vocab_parallel.rs): each of 8 ranks reads its shard.
    v.push(Row {
        op: "vocabulary-parallel partials, per rank",
        shape: "bf16 [16384, 128256], tp 8".into(),
        bytes: n * vocab / 8.0 * BF16 + n * 5.0 * F32,
        flops: 0.0,
        note: "one read of the shard; 5 f32 partials per row",
    });
    v
}

fn human_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

fn human_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// The markdown table.
fn table() -> String {
    let mut t = String::from(
        "| op | shape | bytes | FLOPs | floor H100 SXM | floor H200 | measured | note |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows() {
        let floors: Vec<String> =
            GPUS.iter().map(|(_, bw, rate)| human_time((r.bytes / bw).max(r.flops / rate))).collect();
        let flops = if r.flops > 0.0 { format!("{:.2} T", r.flops / 1e12) } else { "-".into() };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | - | {} |\n",
            r.op,
            r.shape,
            human_bytes(r.bytes),
            flops,
            floors[0],
            floors[1],
            r.note
        ));
    }
    t
}

const BEGIN: &str = "<!-- floors:begin (generated by tests/perf_floors.rs) -->\n";
const END: &str = "<!-- floors:end -->";

#[test]
fn readme_floors_table_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (Some(a), Some(b)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no floors table markers ({BEGIN:?} ... {END:?})");
    };
    let want = table();
    let have = &readme[a + BEGIN.len()..b];
    if have != want {
        if std::env::var("PREF_KERNELS_BLESS").as_deref() == Ok("1") {
            let new = format!("{}{}{}", &readme[..a + BEGIN.len()], want, &readme[b..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        panic!(
            "README.md's floors table is stale: rerun with PREF_KERNELS_BLESS=1.\n--- README\n{have}\n--- generated\n{want}"
        );
    }
}

#[test]
fn floors_are_the_larger_of_bytes_and_flops() {
    // The canonical token log-probs cell: 4.20 GB at 3.35 TB/s = 1.25 ms.
    let r = &rows()[0];
    assert!((r.bytes / 3.35e12 - 1.2545e-3).abs() < 1e-6, "{}", r.bytes / 3.35e12);
    // The fused head forward + backward: 4 GEMMs of 8.8 TFLOP = 35.2 TFLOP at 989.4 TFLOP/s =
    // 35.6 ms, compute-bound.
    let fh = rows().into_iter().find(|r| r.op == "fused LM head forward + backward").unwrap();
    assert!((fh.flops / 989.4e12 - 35.56e-3).abs() < 0.05e-3, "{}", fh.flops / 989.4e12);
    assert!(fh.flops / 989.4e12 > fh.bytes / 3.35e12);
}
