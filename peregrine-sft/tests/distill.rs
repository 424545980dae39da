//! Knowledge distillation: the loss, its gradient, and its configuration errors.

use candle_core::{Device, Tensor, Var};
use peregrine_sft::train::{distillation_loss, FinetuneConfig};

fn entropy(p: &[f64]) -> f64 {
    -p.iter().map(|x| x * x.ln()).sum::<f64>()
}

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[test]
fn distillation_loss_is_minimal_with_zero_gradient_when_the_student_matches_the_teacher() {
    let dev = Device::Cpu;
    let t = 3.0;
    let rows: Vec<Vec<f64>> =
        vec![vec![2.0, -1.0, 0.5, 3.0, 0.0, 1.5, -2.0], vec![0.1, 0.2, -0.3, 4.0, -1.0, 0.0, 2.5]];
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    let teacher = Tensor::from_vec(flat.clone(), (2, 7), &dev).unwrap();
    let student = Var::from_tensor(&teacher).unwrap();
    let loss = distillation_loss(student.as_tensor(), &teacher, t).unwrap();
    // At the minimum the loss is T² times the mean entropy of the softened teacher.
    let want =
        t * t * rows.iter().map(|r| entropy(&softmax(&r.iter().map(|v| v / t).collect::<Vec<_>>()))).sum::<f64>() / 2.0;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want, "loss {got}, expected {want}");
    let g = loss.backward().unwrap();
    let grad: Vec<f32> = g.get(&student).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(grad.iter().all(|v| v.abs() < 1e-6), "gradient at the minimum: {grad:?}");
    // Any other student scores higher, and its gradient points back to the teacher.
    let other =
        Var::from_tensor(&Tensor::from_vec(flat.iter().rev().cloned().collect::<Vec<f32>>(), (2, 7), &dev).unwrap())
            .unwrap();
    let l2 = distillation_loss(other.as_tensor(), &teacher, t).unwrap();
    assert!(l2.to_scalar::<f32>().unwrap() as f64 > got + 0.1);
    let g2: Vec<f32> = l2.backward().unwrap().get(&other).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let s: Vec<f32> = other.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let toward: f32 = g2.iter().zip(s.iter().zip(&flat)).map(|(g, (s, t))| -g * (t - s)).sum();
    assert!(toward > 0.0, "a gradient step must move the student towards the teacher");
}

#[test]
fn distillation_settings_are_checked() {
    let need_teacher = peregrine_sft::train::Finetuner::new(
        &empty_model(),
        FinetuneConfig { distill: 0.5, ..FinetuneConfig::default() },
    );
    let e = need_teacher.err().expect("distillation without a teacher must fail").to_string();
    assert!(e.contains("teacher"), "{e}");
    let bad_weight =
        FinetuneConfig { distill: 1.5, teacher: Some("t.safetensors".into()), ..FinetuneConfig::default() };
    let e = peregrine_sft::train::Finetuner::new(&empty_model(), bad_weight).err().unwrap().to_string();
    assert!(e.contains("distillation weight"), "{e}");
    let missing = FinetuneConfig {
        distill: 0.5,
        teacher: Some("/nonexistent/teacher.safetensors".into()),
        ..FinetuneConfig::default()
    };
    let e = peregrine_sft::train::Finetuner::new(&empty_model(), missing).err().unwrap().to_string();
    assert!(e.contains("teacher.safetensors"), "{e}");
}

fn empty_model() -> peregrine_model::ir::Model {
    use peregrine_model::ir::*;
    use peregrine_model::testkit::{graph, input_spec, node};
    Model::new(graph("empty", input_spec([3, 4, 4]), vec![node("flat", Op::Flatten, &[INPUT])], "flat"), Weights::new())
        .unwrap()
}

#[test]
fn output_matching_settings_are_checked() {
    let teacher = Some(std::path::PathBuf::from("t.safetensors"));
    let cases = [
        (FinetuneConfig { match_outputs: true, distill: 1.0, ..FinetuneConfig::default() }, "teacher model file"),
        (
            FinetuneConfig { match_outputs: true, distill: 0.5, teacher: teacher.clone(), ..FinetuneConfig::default() },
            "distillation weight of 1",
        ),
        (FinetuneConfig { feature_weight: 1.0, ..FinetuneConfig::default() }, "output matching only"),
        (
            FinetuneConfig {
                match_outputs: true,
                distill: 1.0,
                teacher,
                feature_weight: f64::NAN,
                ..FinetuneConfig::default()
            },
            "feature weight",
        ),
    ];
    for (config, want) in cases {
        let e = peregrine_sft::train::Finetuner::new(&empty_model(), config).err().expect("refused").to_string();
        assert!(e.contains(want), "expected '{want}' in: {e}");
    }
}

#[test]
fn output_matching_refuses_a_teacher_with_another_output() {
    use peregrine_model::testkit::odd_mobile_model;
    // A directory of its own (process, time): a stale or concurrent file of the same name
    // must not stand in for the teacher written here.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("peregrine-teacher-shape-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let teacher = dir.join("teacher.safetensors");
    // Same input as the student, 7 outputs; the student below flattens a 3×19×23 input.
    peregrine_model::format::save_model(&odd_mobile_model(1), &teacher).unwrap();
    let student = {
        use peregrine_model::ir::*;
        use peregrine_model::testkit::{graph, node, raw_input};
        Model::new(
            graph("flat", raw_input([3, 19, 23]), vec![node("flat", Op::Flatten, &[INPUT])], "flat"),
            Weights::new(),
        )
        .unwrap()
    };
    let config = FinetuneConfig {
        match_outputs: true,
        distill: 1.0,
        teacher: Some(teacher),
        degree: None,
        ..FinetuneConfig::default()
    };
    let e = match peregrine_sft::train::Finetuner::new(&student, config) {
        Ok(_) => {
            panic!("a teacher with 7 outputs was accepted for a student with 1311 (teacher file {})", dir.display())
        }
        Err(e) => e.to_string(),
    };
    assert!(e.contains("output matching needs the same output"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
