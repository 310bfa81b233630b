use std::path::Path;

use seedbed_types::GenerationRequest;

use super::*;

fn catalog() -> Catalog {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models");
    let aliases = [("seedream-4-5-251128".to_string(), "tiny-sd".to_string())];
    Catalog::scan(&models, &aliases).unwrap()
}

fn request(json: serde_json::Value) -> GenerationRequest {
    serde_json::from_value(json).unwrap()
}

fn check(json: serde_json::Value) -> Result<GenerationSpec> {
    validate(&request(json), &catalog()).map(|(spec, _)| spec)
}

fn param_of(json: serde_json::Value) -> &'static str {
    match check(json).unwrap_err() {
        CoreError::InvalidParameter { param, .. } | CoreError::MissingParameter { param } => param,
        other => panic!("not a parameter error: {other}"),
    }
}

#[test]
fn defaults_are_resolved_once() {
    let spec =
        check(serde_json::json!({"model": "seedream-4-5-251128", "prompt": "a fox"})).unwrap();
    assert_eq!(spec.model, "seedream-4-5-251128");
    assert_eq!(spec.images, 1);
    assert!(!spec.stream);
    assert_eq!(spec.response_format, ResponseFormat::Url);
    let local = spec.local().unwrap();
    assert_eq!(local.local_model, "tiny-sd");
    assert_eq!((local.width, local.height), (64, 64));
    assert!(local.seed <= MAX_SEED as u64);
    assert_eq!((local.steps, local.guidance_scale), (30, 7.5));
    assert!(local.watermark);
    assert_eq!(local.output_format, ImageFormat::Jpeg);
    let spec = check(serde_json::json!({
        "model": "tiny-sd", "prompt": "a fox", "size": "2K", "seed": 7, "watermark": false,
        "steps": 2, "guidance_scale": 0, "scheduler": "euler_a", "output_format": "png",
        "response_format": "b64_json", "stream": true
    }))
    .unwrap();
    assert!(spec.stream);
    let local = spec.local().unwrap();
    assert_eq!((local.width, local.height, local.seed), (128, 128, 7));
    assert_eq!(local.scheduler, Some(SchedulerKind::EulerAncestral));
    assert!(!local.watermark);
}

#[test]
fn missing_and_unknown_fields() {
    assert_eq!(param_of(serde_json::json!({"prompt": "x"})), "model");
    assert_eq!(
        param_of(serde_json::json!({"model": "tiny-sd", "prompt": " "})),
        "prompt"
    );
    let error = check(serde_json::json!({"model": "nope", "prompt": "x"})).unwrap_err();
    assert!(matches!(error, CoreError::ModelNotFound { .. }));
}

#[test]
fn every_bound_names_its_field() {
    let base = |extra: serde_json::Value| {
        let mut json = serde_json::json!({"model": "tiny-sd", "prompt": "x"});
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        param_of(json)
    };
    assert_eq!(base(serde_json::json!({"size": "9x9"})), "size");
    assert_eq!(base(serde_json::json!({"seed": -2})), "seed");
    assert_eq!(base(serde_json::json!({"seed": 2147483648i64})), "seed");
    assert_eq!(base(serde_json::json!({"steps": 0})), "steps");
    assert_eq!(
        base(serde_json::json!({"guidance_scale": 31})),
        "guidance_scale"
    );
    assert_eq!(base(serde_json::json!({"scheduler": "lms"})), "scheduler");
    assert_eq!(base(serde_json::json!({"strength": 0})), "strength");
    assert_eq!(
        base(serde_json::json!({"scheduler": "ddim", "karras_sigmas": true})),
        "karras_sigmas"
    );
    assert_eq!(
        base(serde_json::json!({"output_format": "gif"})),
        "output_format"
    );
    assert_eq!(
        base(serde_json::json!({"sequential_image_generation_options": {"max_images": 16}})),
        "sequential_image_generation_options.max_images"
    );
    assert_eq!(base(serde_json::json!({"image": []})), "image");
    assert_eq!(
        base(serde_json::json!({"image": ["https://a/x.png", "https://a/y.png"]})),
        "image"
    );
    assert_eq!(
        base(serde_json::json!({"image": "data:image/PNG;base64,AAAA"})),
        "image"
    );
    assert_eq!(
        base(serde_json::json!({"optimize_prompt_options": {"mode": "turbo"}})),
        "optimize_prompt_options.mode"
    );
}

#[test]
fn sequential_generation_counts() {
    let count = |json: serde_json::Value| check(json).unwrap().images;
    assert_eq!(
        count(serde_json::json!({"model": "tiny-sd", "prompt": "four images of a fox"})),
        1
    );
    assert_eq!(
        count(
            serde_json::json!({"model": "tiny-sd", "prompt": "four images of a fox",
            "sequential_image_generation": "auto"})
        ),
        4
    );
    assert_eq!(
        count(
            serde_json::json!({"model": "tiny-sd", "prompt": "a set of 3 cartoon panels",
            "sequential_image_generation": "auto"})
        ),
        3
    );
    assert_eq!(
        count(serde_json::json!({"model": "tiny-sd", "prompt": "a fox",
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 2}})),
        2
    );
    assert_eq!(
        count(serde_json::json!({"model": "tiny-sd", "prompt": "a fox",
            "sequential_image_generation": "auto"})),
        1
    );
    // Reference images count against the 15.
    assert_eq!(
        count(serde_json::json!({"model": "tiny-sd", "prompt": "x",
            "image": "https://example.com/a.png",
            "sequential_image_generation": "auto",
            "sequential_image_generation_options": {"max_images": 15}})),
        14
    );
}

#[test]
fn prompts_have_a_length_limit() {
    let long = "a".repeat(MAX_PROMPT_CHARS + 1);
    assert_eq!(
        param_of(serde_json::json!({"model": "tiny-sd", "prompt": long})),
        "prompt"
    );
    assert_eq!(
        param_of(serde_json::json!({"model": "tiny-sd", "prompt": "x", "negative_prompt": long})),
        "negative_prompt"
    );
    // The limit counts characters, not bytes: 32,000 CJK characters are fine.
    let wide = "狐".repeat(MAX_PROMPT_CHARS);
    check(serde_json::json!({"model": "tiny-sd", "prompt": wide})).unwrap();
    let message = check(serde_json::json!({"model": "tiny-sd", "prompt": long}))
        .unwrap_err()
        .to_string();
    assert!(message.contains("limit is 32000"), "{message}");
    // Relayed requests are bounded too.
    let request = request(serde_json::json!({"model": "up", "prompt": long}));
    let raw = RawRequest::parse(&serde_json::to_vec(&request).unwrap()).unwrap();
    assert!(matches!(
        validate_gateway(&request, &raw),
        Err(CoreError::InvalidParameter {
            param: "prompt",
            ..
        })
    ));
}

#[test]
fn karras_sigmas_reach_the_spec_and_old_specs_still_parse() {
    let spec = check(serde_json::json!({"model": "tiny-sd", "prompt": "x",
        "scheduler": "dpmpp2m", "karras_sigmas": true}))
    .unwrap();
    assert!(spec.local().unwrap().karras_sigmas);
    // A job row written before the field existed.
    let mut stored = serde_json::to_value(&spec).unwrap();
    stored.as_object_mut().unwrap().remove("karras_sigmas");
    let parsed: GenerationSpec = serde_json::from_value(stored).unwrap();
    assert!(!parsed.local().unwrap().karras_sigmas);
}

#[test]
fn a_spec_is_stored_flat_and_rows_from_before_the_split_still_read() {
    let spec = check(serde_json::json!({"model": "tiny-sd", "prompt": "x",
        "scheduler": "euler-ancestral"}))
    .unwrap();
    let stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(stored["local_model"], "tiny-sd");
    assert_eq!(
        stored["scheduler"], "euler_a",
        "stored by its canonical name"
    );
    assert_eq!(
        serde_json::from_value::<GenerationSpec>(stored).unwrap(),
        spec
    );

    // A relayed job as an older version wrote it: the local fields present but empty.
    let old_relay = serde_json::json!({
        "model": "up", "local_model": "", "prompt": "p", "negative_prompt": null,
        "width": 0, "height": 0, "compute_width": 0, "compute_height": 0, "images": 2,
        "seed": 0, "steps": 0, "guidance_scale": 0.0, "scheduler": null, "strength": 0.0,
        "reference_images": [], "response_format": "b64_json", "output_format": "jpeg",
        "watermark": true, "stream": true, "gateway": "{\"model\":\"up\"}"
    });
    let relay: GenerationSpec = serde_json::from_value(old_relay).unwrap();
    assert_eq!(
        relay.run,
        RunSpec::Relay(RelaySpec {
            body: r#"{"model":"up"}"#.into()
        })
    );
    assert_eq!((relay.images, relay.stream), (2, true));

    // A stored scheduler this version does not know is an error, not a silent default.
    let mut stored = serde_json::to_value(&spec).unwrap();
    stored["scheduler"] = "plms".into();
    assert!(serde_json::from_value::<GenerationSpec>(stored).is_err());
}

fn with_loras(catalog: Catalog) -> Catalog {
    let loras = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/loras");
    catalog.with_loras(Some(crate::loras::LoraFolder::open(&loras).unwrap()))
}

fn lora_message(catalog: &Catalog, json: serde_json::Value) -> String {
    match validate(&request(json), catalog).unwrap_err() {
        CoreError::InvalidParameter { param, message } => {
            assert_eq!(param, "loras");
            message
        }
        other => panic!("not a loras error: {other}"),
    }
}

#[test]
fn loras_are_found_checked_against_the_model_and_recorded() {
    let catalog = with_loras(catalog());
    let (spec, _) = validate(
        &request(serde_json::json!({"model": "tiny-sdxl", "prompt": "a fox",
            "loras": [{"name": "tiny-sdxl-peft", "scale": 0.6}]})),
        &catalog,
    )
    .unwrap();
    let local = spec.local().unwrap();
    assert_eq!(
        local.loras,
        [LoraUse {
            name: "tiny-sdxl-peft".into(),
            scale: 0.6
        }]
    );
    // Stored and read back with the job.
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["loras"],
        serde_json::json!([{"name": "tiny-sdxl-peft", "scale": 0.6}])
    );
    assert_eq!(
        serde_json::from_value::<GenerationSpec>(json).unwrap(),
        spec
    );
    // No LoRAs: nothing stored, so older rows and new ones read the same.
    let plain = check(serde_json::json!({"model": "tiny-sd", "prompt": "a fox"})).unwrap();
    assert!(serde_json::to_value(&plain).unwrap().get("loras").is_none());

    let message = lora_message(
        &catalog,
        serde_json::json!({"model": "tiny-sd", "prompt": "a fox", "loras": [{"name": "tiny-sdxl-peft"}]}),
    );
    assert!(message.contains("does not fit model tiny-sd"), "{message}");
}

/// A checkpoint file is checked as a folder is: its layers are read through its header.
#[test]
fn loras_for_a_checkpoint_file_are_checked_against_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let single = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/single-file");
    std::fs::copy(
        single.join("tiny-sdxl.safetensors"),
        dir.path().join("xl.safetensors"),
    )
    .unwrap();
    let catalog = with_loras(Catalog::scan(dir.path(), &[]).unwrap());
    let ok = serde_json::json!({"model": "xl", "prompt": "a fox", "loras": [{"name": "tiny-sdxl-kohya"}]});
    assert!(validate(&request(ok), &catalog).is_ok());
    let message = lora_message(
        &catalog,
        serde_json::json!({"model": "xl", "prompt": "a fox", "loras": [{"name": "tiny-sd-peft"}]}),
    );
    assert!(message.contains("does not fit model xl"), "{message}");
}

#[test]
fn loras_for_a_model_that_takes_none_or_an_upstream_are_refused() {
    let dit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models-dit");
    let catalog = with_loras(Catalog::scan(&dit, &[]).unwrap());
    let message = lora_message(
        &catalog,
        serde_json::json!({"model": "tiny-zimage", "prompt": "a fox", "loras": [{"name": "tiny-sd-peft"}]}),
    );
    assert!(message.contains("takes no LoRAs"), "{message}");
    let body =
        serde_json::json!({"model": "up", "prompt": "a fox", "loras": [{"name": "tiny-sd-peft"}]});
    let raw = RawRequest::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    match validate_gateway(&request(body), &raw).unwrap_err() {
        CoreError::InvalidParameter { param, message } => {
            assert_eq!(param, "loras");
            assert!(message.contains("served by an upstream"), "{message}");
        }
        other => panic!("{other}"),
    }
}

/// `preview` asks this server for previews of a local denoise: a local spec keeps it, and a
/// relayed body goes upstream without it (everything else byte for byte as sent).
#[test]
fn preview_stays_local_and_is_not_relayed() {
    let spec =
        check(serde_json::json!({"model": "tiny-sd", "prompt": "x", "preview": true})).unwrap();
    assert!(spec.local().unwrap().preview);
    let plain = check(serde_json::json!({"model": "tiny-sd", "prompt": "x"})).unwrap();
    assert!(!plain.local().unwrap().preview);

    let body = br#"{"model": "up", "prompt": "x", "preview": true, "size": "2K"}"#;
    let raw = RawRequest::parse(body).unwrap();
    let request: GenerationRequest = serde_json::from_slice(body).unwrap();
    let RunSpec::Relay(relay) = validate_gateway(&request, &raw).unwrap().run else {
        panic!("a relayed request");
    };
    let relayed: serde_json::Value = serde_json::from_str(&relay.body).unwrap();
    assert_eq!(
        relayed,
        serde_json::json!({"model": "up", "prompt": "x", "size": "2K"})
    );
}
