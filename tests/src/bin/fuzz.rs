//! `fuzz`: throws mutated and random inputs at every decoder that reads what a peer or a caller
//! sends (gRPC messages, wire tensors and codecs, erasure masks, trace and threshold files) and
//! checks that each returns a value or an error and never panics. Stable Rust has no libFuzzer
//! (cargo-fuzz needs nightly), so this is mutation fuzzing without coverage feedback: each
//! execution takes a valid seed input, applies 1–8 random byte-level mutations (flips,
//! interesting values, insertions, deletions, truncation, splices) or draws a structured input
//! at random, and runs the target under `catch_unwind`. A panic saves the input under
//! `--crashes` and fails the run.
//!
//!   cargo run --release -p splitinfer-tests --bin fuzz -- --seconds 60          # every target
//!   cargo run --release -p splitinfer-tests --bin fuzz -- --target wire --seconds 5
//!
//! Prints one line per target (executions, seconds, rate, errors returned) and a total.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use split_core::transform::{Concealment, LinkSetup, Normalization};
use split_core::wire::{WireDType, WireTensor};
use splitinfer_proto::v1 as pb;

const DTYPES: [WireDType; 7] =
    [WireDType::F32, WireDType::F16, WireDType::BF16, WireDType::I8, WireDType::I4, WireDType::I8Outlier, WireDType::I4Outlier];

/// One target: seed inputs to mutate, and the function under test (`Err` = a clean refusal).
struct Target {
    name: &'static str,
    what: &'static str,
    seeds: fn() -> Vec<Vec<u8>>,
    run: fn(&[u8]) -> Result<(), String>,
}

const TARGETS: &[Target] = &[
    Target { name: "ue-message", what: "prost decode of UeMessage, then the edge's tensor checks and decode", seeds: ue_message_seeds, run: run_ue_message },
    Target { name: "wire", what: "WireTensor::new + LinkSetup::decode with an erasure mask, every dtype, from raw parts", seeds: wire_seeds, run: run_wire },
    Target { name: "edge-message", what: "prost decode of EdgeMessage (what the UE reads)", seeds: edge_message_seeds, run: run_edge_message },
    Target { name: "control", what: "prost decode of SetChannelRequest, Subscribe and Override requests", seeds: control_seeds, run: run_control },
    Target { name: "trace", what: "the emulator's trace CSV parser", seeds: trace_seeds, run: run_trace },
    Target { name: "thresholds", what: "the agent's threshold table parser", seeds: threshold_seeds, run: run_thresholds },
    Target { name: "policy", what: "the agent's learned-policy file (safetensors + metadata) parser", seeds: policy_seeds, run: run_policy },
];

// ---- seeds -------------------------------------------------------------------------------

fn tensor(dtype: WireDType, rows: usize, n: usize, seed: u64) -> pb::Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    WireTensor::from_f32(dtype, vec![1, rows, n], &values).unwrap().into()
}

fn ue_message_seeds() -> Vec<Vec<u8>> {
    let mut out = vec![
        pb::UeMessage {
            kind: Some(pb::ue_message::Kind::Open(pb::Open {
                model_sha256: "ab".repeat(32),
                prompt_tokens: 12,
                max_new_tokens: 64,
                client: "ue".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    ];
    for (i, &d) in DTYPES.iter().enumerate() {
        let hidden = tensor(d, 1 + i % 3, 64, i as u64);
        let erased = if i % 2 == 0 { vec![0b1010_0001, 0, 0xff] } else { Vec::new() };
        let a = pb::Activation { position: i as u64, split: Some(pb::Split { k: 10, epoch: 1 }), hidden: Some(hidden), erased: erased.into(), ..Default::default() };
        out.push(pb::UeMessage { kind: Some(pb::ue_message::Kind::Activation(a)) }.encode_to_vec());
    }
    out
}

fn run_ue_message(data: &[u8]) -> Result<(), String> {
    let msg = pb::UeMessage::decode(data).map_err(|e| e.to_string())?;
    if let Some(pb::ue_message::Kind::Activation(a)) = msg.kind {
        let t = WireTensor::try_from(a.hidden.ok_or("no tensor")?).map_err(|e| e.to_string())?;
        decode_all_ways(&t, &a.erased, a.position as usize)?;
    }
    Ok(())
}

/// Structured: dtype, dims, a mask, and a payload whose length is usually (not always) right.
fn wire_seeds() -> Vec<Vec<u8>> {
    DTYPES.iter().enumerate().map(|(i, &d)| tensor(d, 2, 40 + i, i as u64).encode_to_vec()).collect()
}

fn run_wire(data: &[u8]) -> Result<(), String> {
    // The first bytes pick the parts; the rest is the payload, trimmed to the size the dtype and
    // shape need when the selector says so.
    if data.len() < 6 {
        return Err("short".into());
    }
    let dtype = DTYPES[data[0] as usize % DTYPES.len()];
    let rows = 1 + data[1] as usize % 4;
    let n = 1 + u16::from_le_bytes([data[2], data[3]]) as usize % 700;
    let mask_len = data[4] as usize % 96;
    let exact = !data[5].is_multiple_of(4);
    let rest = &data[6..];
    let (mask, payload) = rest.split_at(mask_len.min(rest.len()));
    let shape = vec![1, rows, n];
    let mut payload = payload.to_vec();
    if exact && let Some(need) = dtype.tensor_bytes(&shape) {
        payload.resize(need, 0x3c);
    }
    let t = WireTensor::new(dtype, shape, Bytes::from(payload)).map_err(|e| e.to_string())?;
    decode_all_ways(&t, mask, data[1] as usize)
}

fn decode_all_ways(t: &WireTensor, erased: &[u8], position: usize) -> Result<(), String> {
    let _ = t.to_f32_vec();
    let mut zeroed = t.clone();
    zeroed.zero_elements(erased);
    for concealment in [Concealment::Zero, Concealment::Mean] {
        let setup = LinkSetup { dtype: t.dtype(), normalization: Normalization::Identity, concealment };
        // Mean concealment without statistics must be a refusal, not a panic.
        let _ = setup.decode(t, erased, None, position);
    }
    let setup = LinkSetup { dtype: t.dtype(), normalization: Normalization::Standardize, concealment: Concealment::Zero };
    let _ = setup.decode(t, erased, None, position);
    Ok(())
}

fn edge_message_seeds() -> Vec<Vec<u8>> {
    vec![
        pb::EdgeMessage {
            kind: Some(pb::edge_message::Kind::Token(pb::Token { position: 5, id: 42, logprob: -1.5, eos: false, ..Default::default() })),
        }
        .encode_to_vec(),
        pb::EdgeMessage {
            kind: Some(pb::edge_message::Kind::Opened(pb::Opened {
                session_id: "s0123".into(),
                resume_secret: "ff".repeat(16),
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    ]
}

fn run_edge_message(data: &[u8]) -> Result<(), String> {
    let msg = pb::EdgeMessage::decode(data).map_err(|e| e.to_string())?;
    if let Some(pb::edge_message::Kind::Migrated(m)) = msg.kind {
        for e in m.kv {
            for t in [e.k, e.v].into_iter().flatten() {
                if let Ok(t) = WireTensor::try_from(t) {
                    let _ = t.to_f32_vec();
                }
            }
        }
    }
    Ok(())
}

fn control_seeds() -> Vec<Vec<u8>> {
    vec![
        pb::SetChannelRequest { snr_db: Some(12.0), trace_path: "drive-by.csv".into(), ..Default::default() }.encode_to_vec(),
        pb::SubscribeRequest { subscriber: "ue".into(), role: pb::Role::Ue as i32, last_epoch: 7 }.encode_to_vec(),
        pb::OverrideRequest { action: Some(pb::override_request::Action::PinK(4)), reason: "test".into() }.encode_to_vec(),
    ]
}

fn run_control(data: &[u8]) -> Result<(), String> {
    let a = pb::SetChannelRequest::decode(data).map(|_| ()).map_err(|e| e.to_string());
    let b = pb::SubscribeRequest::decode(data).map(|_| ()).map_err(|e| e.to_string());
    let c = pb::OverrideRequest::decode(data).map(|_| ()).map_err(|e| e.to_string());
    a.or(b).or(c)
}

fn trace_seeds() -> Vec<Vec<u8>> {
    vec![
        b"t_ms,snr_db,m\n0,20,1\n100,18.5,1\n200,3,2.5\n".to_vec(),
        b"t_ms,snr_db,m,note\n0,-5,1,x\n1000,-3.5,0.5,y\n".to_vec(),
    ]
}

fn run_trace(data: &[u8]) -> Result<(), String> {
    split_core::channel::trace::Trace::parse(&String::from_utf8_lossy(data)).map(|_| ())
}

fn threshold_seeds() -> Vec<Vec<u8>> {
    vec![b"min_snr_db,max_loss_rate,k\n# good\n20,0.01,1\n10,0.05,8\n-inf,1,15\n".to_vec()]
}

fn run_thresholds(data: &[u8]) -> Result<(), String> {
    agent::policy::threshold::Table::parse(std::path::Path::new("fuzz.csv"), &String::from_utf8_lossy(data)).map(|_| ()).map_err(|e| e.to_string())
}

fn policy_seeds() -> Vec<Vec<u8>> {
    // The policy the repository ships, trained by `splitinfer rl report`.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/rl/smollm2-135m/policy-mb-ppo.safetensors");
    vec![std::fs::read(path).unwrap_or_else(|e| panic!("the seed policy {path}: {e}"))]
}

fn run_policy(data: &[u8]) -> Result<(), String> {
    agent::policy::learned::PolicyFile::parse(data).map(|_| ())
}

// ---- mutation ------------------------------------------------------------------------------

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b',', b'\n', b'-', b'.', b'e'];

fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_ratio(1, 32) {
        let len = rng.random_range(0..256);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut d = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = d.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                d[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 => {
                let i = rng.random_range(0..=len);
                d.insert(i, rng.random());
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                d.drain(i..i + n);
            }
            4 if len > 0 => d.truncate(rng.random_range(0..len)),
            5 if len > 0 => {
                // Duplicate a chunk in place (repeated fields, long lines).
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let chunk: Vec<u8> = d[i..i + n].to_vec();
                let at = rng.random_range(0..=d.len());
                d.splice(at..at, chunk);
            }
            _ => {
                // Splice in part of another seed.
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let i = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=d.len());
                    d.splice(at..at, other[i..].iter().copied().take(32));
                }
            }
        }
    }
    d
}

struct Args {
    target: Option<String>,
    seconds: f64,
    seed: u64,
    crashes: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { target: None, seconds: 10.0, seed: 0, crashes: PathBuf::from("fuzz-crashes") };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.target = Some(value()?),
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--crashes" => a.crashes = PathBuf::from(value()?),
            "--help" | "-h" => {
                println!("fuzz [--target NAME] [--seconds S per target, default 10] [--seed N] [--crashes DIR]\n\ntargets:");
                for t in TARGETS {
                    println!("  {:<13} {}", t.name, t.what);
                }
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    // Not `<= 0.0`: NaN must be refused too.
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        return Err("--seconds must be positive".into());
    }
    if let Some(t) = &a.target
        && !TARGETS.iter().any(|x| x.name == t)
    {
        return Err(format!("no target {t:?}; targets: {}", TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")));
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    // Panics are what we look for: report them ourselves, once, with the input saved.
    std::panic::set_hook(Box::new(|_| {}));
    let budget = Duration::from_secs_f64(args.seconds);
    let (mut total, mut crashed) = (0u64, false);
    println!("target,executions,seconds,executions_per_s,refused,crashes");
    for (ti, t) in TARGETS.iter().enumerate().filter(|(_, t)| args.target.as_deref().is_none_or(|n| n == t.name)) {
        let seeds = (t.seeds)();
        for s in &seeds {
            if let Err(e) = (t.run)(s) {
                eprintln!("fuzz: {}: a seed is refused ({e}); the seeds must be valid inputs", t.name);
                std::process::exit(1);
            }
        }
        let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(ti as u64));
        let started = Instant::now();
        let (mut execs, mut refused, mut crashes) = (0u64, 0u64, 0u64);
        while started.elapsed() < budget {
            for _ in 0..256 {
                let input = mutate(&mut rng, &seeds);
                match catch_unwind(AssertUnwindSafe(|| (t.run)(&input))) {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => refused += 1,
                    Err(panic) => {
                        crashes += 1;
                        let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                        let _ = std::fs::create_dir_all(&args.crashes);
                        let path = args.crashes.join(format!("{}-{execs}.bin", t.name));
                        let _ = std::fs::write(&path, &input);
                        eprintln!("fuzz: {}: PANIC ({why}); input saved to {}", t.name, path.display());
                    }
                }
                execs += 1;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("{},{execs},{secs:.1},{:.0},{refused},{crashes}", t.name, execs as f64 / secs);
        total += execs;
        crashed |= crashes > 0;
    }
    println!("total,{total},,,,{}", if crashed { "CRASHED" } else { "0" });
    if crashed {
        std::process::exit(1);
    }
}
