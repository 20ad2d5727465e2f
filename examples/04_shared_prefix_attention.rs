//! Shared-prefix group attention: one prompt of 40 tokens shared by 3 responses (a GRPO group),
//! the prompt's K/V read once, never copied per response; O and the softmax LSE against the f64
//! reference with the explicit mask. `cargo run --example 04_shared_prefix_attention`
use half::bf16;
use pref_kernels::shared_prefix_attention::reference::forward;
use pref_kernels::shared_prefix_attention::{AttnShape, PrefixGroup, SharedPrefixLayout};
use pref_kernels::{Backend, Gpu};

fn main() -> pref_kernels::Result<()> {
    let gpu = Gpu::open(Backend::Auto, 0)?;
    let group = PrefixGroup { prefix_len: 40, resp_lens: vec![17, 9, 30] };
    let layout = SharedPrefixLayout::from_lengths(vec![group])?; // tokens: [prompt | r1 | r2 | r3]
    let shape = AttnShape::new(4, 2, 64); // 4 query heads sharing 2 K/V heads (GQA), head dim 64
    let t = layout.total_tokens();
    let fill = |n: usize, seed: usize| -> Vec<bf16> {
        (0..n).map(|i| bf16::from_f32((((i * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)).collect()
    };
    let (q, k, v) = (fill(t * 4 * 64, 1), fill(t * 2 * 64, 2), fill(t * 2 * 64, 3));

    let s = gpu.default_stream();
    let dl = gpu.upload_prefix_layout(&s, &layout)?;
    let (dq, dk, dv) = (s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?);
    let mut o = s.alloc_zeros::<bf16>(q.len())?;
    let mut lse = s.alloc_zeros::<f32>(4 * t)?;
    let (qv, kv, vv) = (dq.as_view(), dk.as_view(), dv.as_view());
    gpu.shared_prefix_attention_forward(
        &s,
        &qv,
        &kv,
        &vv,
        &dl,
        shape,
        &mut o.as_view_mut(),
        &mut lse.as_view_mut(),
    )?;

    let want = forward(&q, &k, &v, &layout, &shape)?;
    let got = s.clone_dtoh(&o)?;
    let max_err = got.iter().zip(&want.o).map(|(g, w)| (g.to_f64() - w).abs()).fold(0.0, f64::max);
    println!("backend: {}; {t} tokens, the prompt attended once", gpu.backend().name());
    println!("max |O - f64| = {max_err:.2e} (bf16 output: about 2^-8 of |O|)");
    println!("LSE of the first response's first token, head 0: {}", s.clone_dtoh(&lse)?[40]);
    Ok(())
}
