"""Issue 8 — measurement: perceptual/CLIP metrics from local weights, the papers' token analyses, the MLLM's
shapes-world scores, the `evaluate` metric modules and `hf-vtok eval`.

Everything runs on tiny random models the tests build and save themselves (numbers are meaningless; the code
paths and the metric properties are real).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vtok  # noqa: F401  (registers everything)
from hf_vtok.data import generate_shapes_dataset
from hf_vtok.evaluation import (
    caption_attribute_accuracy,
    clip_image_similarity,
    clip_score,
    editing_accuracy,
    evaluate_tokenizer,
    foreground_ari,
    line_chart,
    load_tokenizer_folder,
    mean_iou_matched,
    mentioned_pairs,
    natural_photos,
    perceptual_distance,
    prefix_decoding_curve,
    psnr,
    qa_accuracy,
    random_code_replacement,
    replace_random_codes,
    ssim,
    text_to_image_accuracy,
    tokens_by_object_count,
)
from hf_vtok.evaluation.tokenizers import decode_tokens, encode_images, token_inputs
from hf_vtok.mllm.processing_mllm import image_processor_for
from hf_vtok.trainer.arguments import FAMILY_MODEL_TYPES

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------------- fixtures
def save_tokenizer_folder(family: str, path: Path, *, perturb: float = 0.0, seed: int = 0) -> Path:
    """A random tiny tokenizer of ``family`` saved as a trained folder (tokenizer/ + image processor + decoder/)."""
    from transformers import CONFIG_MAPPING, AutoModelForPreTraining

    torch.manual_seed(seed)
    model = AutoModelForPreTraining.from_config(CONFIG_MAPPING[FAMILY_MODEL_TYPES[family]].tiny()).eval()
    if perturb:  # zero-initialised output layers make a fresh decoder ignore its condition; wake them up
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(perturb * torch.randn_like(parameter))
    model.tokenizer.save_pretrained(path / "tokenizer")
    image_processor_for(model.config).save_pretrained(path / "tokenizer")
    model.get_decoder_pipeline().save_pretrained(path / "decoder")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "slot_qformer": save_tokenizer_folder("slot_qformer", root / "slot_qformer"),
        "setok": save_tokenizer_folder("setok", root / "setok"),
        "ddt": save_tokenizer_folder("ddt", root / "ddt", perturb=0.05),
    }


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes_dataset(4, image_size=64, style="textured", seed=3, progress=False)


@pytest.fixture(scope="module")
def flat_shapes():
    return generate_shapes_dataset(3, image_size=64, style="flat", seed=0, progress=False)


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2")
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    from hf_vtok.data.text_tokenizer import build_text_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    tokenizer = build_text_tokenizer()
    config = CLIPConfig(
        # eos_token_id=2 selects CLIP's "pool at the highest token id" rule, which a word-level vocabulary needs
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "max_position_embeddings": 64, "eos_token_id": 2, "bos_token_id": 2, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def noisy_pair(seed: int = 0, noise: float = 0.2, shape=(2, 40, 40, 3)):
    rng = np.random.default_rng(seed)
    clean = rng.random(shape)
    return clean, np.clip(clean + rng.normal(0.0, noise, shape), 0.0, 1.0)


# ------------------------------------------------------------------------------------------ perceptual distance
def test_perceptual_distance_is_zero_for_identical_images_and_grows_with_noise(dinov2_folder):
    clean, _ = noisy_pair()
    assert np.allclose(perceptual_distance(clean, clean, dinov2_folder), 0.0, atol=1e-6)
    distances = [float(np.mean(perceptual_distance(clean, noisy_pair(noise=n)[1], dinov2_folder))) for n in (0.05, 0.2, 0.5)]
    assert distances[0] < distances[1] < distances[2]
    assert all(0.0 < d <= 4.0 for d in distances)  # unit vectors: each squared difference is at most 4


def test_perceptual_distance_layouts_symmetry_and_layers(dinov2_folder):
    clean, noisy = noisy_pair()
    batch = perceptual_distance(clean, noisy, dinov2_folder)
    assert isinstance(batch, np.ndarray) and batch.shape == (2,)
    single = perceptual_distance(clean[0], noisy[0], dinov2_folder)
    assert isinstance(single, float) and single == pytest.approx(batch[0], rel=1e-5)
    assert perceptual_distance(noisy, clean, dinov2_folder) == pytest.approx(batch, rel=1e-5)
    # torch channel-first and uint8 PIL give the same answer as numpy floats
    as_torch = perceptual_distance(torch.from_numpy(clean).permute(0, 3, 1, 2), torch.from_numpy(noisy).permute(0, 3, 1, 2), dinov2_folder)
    assert as_torch == pytest.approx(batch, rel=1e-5)
    # lists may mix sizes; one layer only gives another (finite) value
    mixed = perceptual_distance([clean[0], clean[1][:32]], [noisy[0], noisy[1][:32]], dinov2_folder, layers=[-1])
    assert mixed.shape == (2,) and np.isfinite(mixed).all()


# --------------------------------------------------------------------------------------------------------- CLIP
def test_clip_score_and_clip_image_similarity(clip_folder):
    clean, noisy = noisy_pair()
    scores = clip_score(clean, ["a red circle", "a blue square left of a green star"], clip_folder)
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 100)).all()
    single = clip_score(clean[0], "a red circle", clip_folder)
    assert single == pytest.approx(scores[0], rel=1e-4)
    assert np.allclose(clip_image_similarity(clean, clean, clip_folder), 100.0, atol=1e-3)
    similarity = clip_image_similarity(clean, noisy, clip_folder)
    assert similarity.shape == (2,) and (similarity <= 100.0 + 1e-3).all()
    with pytest.raises(ValueError, match="texts"):
        clip_score(clean, ["only one caption"], clip_folder)


def test_evaluate_tokenizer_with_perceptual_and_clip_at_the_decoder_resolution(folders, shapes, dinov2_folder, clip_folder):
    loaded = load_tokenizer_folder(folders["slot_qformer"])  # 64 px input, 32 px decoder
    result = evaluate_tokenizer(loaded, shapes, num_inference_steps=1, perceptual_backbone=dinov2_folder, clip_path=clip_folder)
    summary = result.summary()
    for key in ("psnr", "ssim", "perceptual", "clip_i", "clip_t", "fg_ari", "miou"):
        assert key in summary and np.isfinite(summary[key]), key
    assert len(result.psnr) == len(result.clip_t) == len(shapes)
    assert result.reconstructions[0].shape == (64, 64, 3)  # the decoder returns the input resolution


@pytest.mark.parametrize("family", ["slot_qformer", "setok", "ddt"])
def test_evaluate_tokenizer_decodes_the_tokens_it_measured_without_encoding_again(folders, shapes, family):
    # The reconstruction must come from the very tokens whose counts and maps were measured: the pipeline's own
    # tokenizer is never asked to encode, and the images equal a direct decode of those tokens with the same seed.
    loaded = load_tokenizer_folder(folders[family])
    pipeline_encodes = []
    original_encode = loaded.pipeline.tokenizer.encode
    loaded.pipeline.tokenizer.encode = lambda *args, **kwargs: pipeline_encodes.append(1) or original_encode(*args, **kwargs)
    result = evaluate_tokenizer(loaded, shapes, batch_size=len(shapes), num_inference_steps=2, seed=5)
    assert pipeline_encodes == []
    tokens, _ = encode_images(loaded, [row.convert("RGB") for row in shapes["image"]])
    direct = decode_tokens(loaded, token_inputs(tokens), steps=2, seed=5)
    assert np.allclose(np.stack(result.reconstructions), direct, atol=1e-6)


# ------------------------------------------------------------------------------------------ token analyses
def test_replace_random_codes_replaces_whole_units():
    ids = torch.arange(32).reshape(2, 16) % 7
    generator = torch.Generator().manual_seed(0)
    replaced, mask = replace_random_codes(ids, 1000, fraction=0.5, group_size=2, generator=generator)
    assert mask.sum(dim=1).tolist() == [8, 8]  # half of the 8 two-id units of each image
    assert torch.equal(mask[:, 0::2], mask[:, 1::2])  # units are replaced as a whole
    assert torch.equal(replaced[~mask], ids[~mask]) and int(replaced.max()) < 1000
    again, _ = replace_random_codes(ids, 1000, fraction=0.5, group_size=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, replaced)
    unchanged, none = replace_random_codes(ids, 1000, fraction=0.0)
    assert torch.equal(unchanged, ids) and not none.any()
    with pytest.raises(ValueError, match="group_size"):
        replace_random_codes(ids, 1000, group_size=3)


def test_random_code_replacement_slot_mllm_b1(folders, shapes):
    loaded = load_tokenizer_folder(folders["slot_qformer"])
    images = list(shapes["image"][:2])
    # fraction 0: both decodes start from the same noise with the same ids -> identical pictures
    same = random_code_replacement(loaded, images, fraction=0.0, num_inference_steps=2).summary()
    assert same["psnr_between"] == float("inf") and same["psnr_drop_percent"] == 0.0
    result = random_code_replacement(loaded, images, fraction=0.5, num_inference_steps=2)
    summary = result.summary()
    assert result.group_size == 2  # SlotQFormer tiny: 2 residual depths per slot, a slot is one visual token
    assert np.isfinite(summary["psnr_between"]) and summary["ssim_between"] < 1.0  # the tokens matter
    assert set(result.images) == {"input", "decoded", "replaced"}
    with pytest.raises(TypeError, match="discrete"):
        random_code_replacement(load_tokenizer_folder(folders["setok"]), images)


def test_prefix_decoding_curve_ddt(folders, shapes):
    loaded = load_tokenizer_folder(folders["ddt"])
    images = list(shapes["image"][:2])
    curve = prefix_decoding_curve(loaded, images, num_inference_steps=2, seed=1)
    assert curve["prefix_lengths"] == [1, 2, 4, 8, 16] and len(curve["psnr"]) == 5
    # n = T is the ordinary reconstruction from the same noise
    full = loaded.pipeline(images=images, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    originals = loaded.image_processor.postprocess_pixel_values(loaded.image_processor(images, return_tensors="pt").pixel_values)
    expected = psnr(originals.permute(0, 2, 3, 1).numpy().astype(np.float64), np.asarray(full, dtype=np.float64))
    assert curve["psnr_per_image"][-1] == pytest.approx(list(expected), rel=1e-4)
    assert len(set(np.round(curve["psnr"], 6))) > 1  # the prefix length changes the picture
    chart = line_chart({"ddt": (curve["prefix_lengths"], curve["psnr"])}, title="t", xlabel="n", ylabel="dB", log_x=True)
    assert chart.size == (560, 360) and chart.mode == "RGB"
    with pytest.raises(TypeError, match="max_tokens"):
        prefix_decoding_curve(load_tokenizer_folder(folders["slot_qformer"]), images)


def test_tokens_by_object_count_and_setok_token_table():
    table = tokens_by_object_count([3, 5, 5, 7, 6], [1, 2, 2, 3, 3])
    assert table["correlation"] == pytest.approx(float(np.corrcoef([3, 5, 5, 7, 6], [1, 2, 2, 3, 3])[0, 1]), abs=1e-4)
    assert [row["objects"] for row in table["table"]] == [1, 2, 3]
    assert table["table"][2] == {"objects": 3, "images": 2, "mean_tokens": 6.5, "std_tokens": 0.5, "min": 6, "max": 7}
    assert tokens_by_object_count([4, 4], [1, 2])["correlation"] is None
    with pytest.raises(ValueError, match="num_tokens"):
        tokens_by_object_count([1, 2], [1])


def test_natural_photos_are_bundled_rgb():
    photos = natural_photos(include_sklearn=False)
    assert {"astronaut", "chelsea", "coffee", "rocket", "camera"} <= set(photos)
    assert all(photo.mode == "RGB" for photo in photos.values())  # camera is greyscale on disk
    with pytest.raises(ValueError, match="names"):
        natural_photos(["not_a_photo"])


# ------------------------------------------------------------------------------------------------------- MLLM
@pytest.fixture(scope="module")
def mllm_folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_vtok.data.text_tokenizer import build_text_tokenizer
    from hf_vtok.mllm import VTokMLLMForConditionalGeneration, VTokMLLMProcessor
    from hf_vtok.models.ddt import DDTTokenizerConfig, DDTTokenizerForPreTraining

    torch.manual_seed(0)
    tokenizer_model = DDTTokenizerForPreTraining(DDTTokenizerConfig.tiny()).eval()
    text_tokenizer = build_text_tokenizer()
    special = {"pad_token_id": text_tokenizer.pad_token_id, "bos_token_id": text_tokenizer.bos_token_id,
               "eos_token_id": text_tokenizer.eos_token_id}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(text_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, **special))
    model = VTokMLLMForConditionalGeneration.from_text_model_and_tokenizer(lm, tokenizer_model.tokenizer, text_tokenizer)
    processor = VTokMLLMProcessor.from_visual_tokenizer(text_tokenizer, tokenizer_model.tokenizer)
    folder = tmp_path_factory.mktemp("mllm")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer_model.get_decoder_pipeline().save_pretrained(folder / "decoder")
    return folder


def test_mentioned_pairs_parses_captions():
    caption = "A large red circle left of a small blue square. The blue square is above two green stars."
    assert mentioned_pairs(caption) == {("red", "circle"), ("blue", "square"), ("green", "star")}
    assert mentioned_pairs("RED LARGE STAR and purple") == {("red", "star")}
    assert mentioned_pairs("") == set()


def test_mllm_shapes_world_metrics_on_a_tiny_random_mllm(mllm_folder, flat_shapes):
    captions = caption_attribute_accuracy(mllm_folder, flat_shapes, max_new_tokens=6)
    assert captions["num_examples"] == 3 and 0.0 <= captions["pair_recall"] <= 1.0 and len(captions["examples"]) == 3
    qa = qa_accuracy(mllm_folder, flat_shapes, num_examples=1)
    assert qa["num_questions"] == len(flat_shapes[0]["questions"]) and 0.0 <= qa["accuracy"] <= 1.0
    assert set(qa["by_type"]) == {q["type"] for q in flat_shapes[0]["questions"]}
    t2i = text_to_image_accuracy(mllm_folder, flat_shapes, num_examples=2, num_inference_steps=1, return_images=True)
    assert {"color_accuracy", "shape_accuracy", "count_accuracy", "all_correct"} <= set(t2i) and len(t2i["images"]) == 2
    edits = editing_accuracy(mllm_folder, flat_shapes, num_examples=2, num_inference_steps=1)
    assert 0.0 <= edits["l1"] <= 1.0 and 0.0 <= edits["color_accuracy"] <= 1.0


def test_mllm_metrics_accept_a_loaded_model_and_check_their_arguments(mllm_folder, flat_shapes):
    from hf_vtok.evaluation import load_mllm_folder

    loaded = load_mllm_folder(mllm_folder)
    assert loaded.decoder is not None
    by_object = qa_accuracy(loaded.model, flat_shapes, loaded.processor, num_examples=1)
    by_path = qa_accuracy(mllm_folder, flat_shapes, num_examples=1)
    assert [e["generated"] for e in by_object["examples"]] == [e["generated"] for e in by_path["examples"]]
    with pytest.raises(ValueError, match="processor"):
        qa_accuracy(loaded.model, flat_shapes)
    with pytest.raises(ValueError, match="prompt"):
        caption_attribute_accuracy(mllm_folder, flat_shapes, prompt="no image marker")
    with pytest.raises(ValueError, match="dataset"):
        qa_accuracy(mllm_folder, flat_shapes.remove_columns("questions"))
    with pytest.raises(ValueError, match="decoder"):
        text_to_image_accuracy(loaded.model, flat_shapes, loaded.processor)


def test_mllm_gates_follow_issue_16_thresholds():
    from hf_vtok.evaluation.mllm import mllm_gate_verdicts

    result = {"qa_accuracy": 0.61, "qa_by_type": {"color": 0.70, "count": 0.40}, "caption_pair_recall": 0.49,
              "reference_qa_majority_by_type": {"color": 0.50, "count": 0.30}, "t2i_color_accuracy": 0.5}
    verdicts = {v["gate"]: v for v in mllm_gate_verdicts(result)}
    assert verdicts["QA accuracy >= 60%"]["pass"]
    assert verdicts["QA 'color' >= its majority answer + 15 points"]["pass"]  # 20 points above
    assert not verdicts["QA 'count' >= its majority answer + 15 points"]["pass"]  # 10 points above
    assert not verdicts["caption attribute accuracy (pairs named) >= 50%"]["pass"]
    assert verdicts["text-to-image colour >= 50%"]["pass"]
    missing = verdicts["text-to-image shape >= 30%"]
    assert missing["value"] is None and not missing["pass"]  # a missing figure fails its gate


def test_hf_vtok_eval_mllm_writes_its_settings_references_and_verdicts(mllm_folder, tmp_path, capsys):
    from hf_vtok.commands.cli import main

    assert main(["eval", "--mllm", str(mllm_folder), "--num-images", "3", "--steps", "1", "--seed", "5",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "eval_mllm.json").read_text())
    assert {k: report["settings"][k] for k in ("seed", "num_images", "style")} == {"seed": 5, "num_images": 3, "style": "flat"}
    result = report["mllms"][mllm_folder.name]
    assert result["image_size"] == 64 and result["num_examples"] == 3
    # what the drawings were rendered with: the tiny DDT decoder sets no guidance of its own, so DDT's default
    assert result["t2i_decoder_guidance_scale"] == 1.0
    assert set(result["reference_qa_majority_by_type"]) == set(result["qa_by_type"])
    assert len(report["gates"][mllm_folder.name]) == 4 + len(result["qa_by_type"])
    assert (tmp_path / f"{mllm_folder.name}_text_to_image.png").is_file()
    printed = capsys.readouterr().out
    assert "majority answer" in printed and "[gate]" in printed
    assert main(["eval", "--mllm", str(mllm_folder), "--tokenizer", str(mllm_folder), "--out", str(tmp_path)]) == 2


# ------------------------------------------------------------------------------------- evaluate metric modules
def test_evaluate_metric_modules_load_offline_from_local_paths(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, (2, 16, 16))
    pred = rng.integers(0, 5, (2, 16, 16))
    fg_ari = evaluate.load("./metrics/fg_ari").compute(predictions=list(pred), references=list(true))
    assert fg_ari["fg_ari"] == pytest.approx(float(np.mean(foreground_ari(true, pred))))
    miou = evaluate.load("./metrics/mean_iou_matched").compute(predictions=list(pred), references=list(true))
    assert miou["mean_iou"] == pytest.approx(float(np.mean(mean_iou_matched(true, pred))))
    clean, noisy = noisy_pair(shape=(2, 16, 16, 3))
    assert evaluate.load("./metrics/psnr").compute(predictions=list(noisy), references=list(clean))["psnr"] == pytest.approx(
        float(np.mean(psnr(clean, noisy)))
    )
    assert evaluate.load("./metrics/ssim").compute(predictions=list(noisy), references=list(clean))["ssim"] == pytest.approx(
        float(np.mean(ssim(clean, noisy)))
    )
    with pytest.raises(ValueError):
        evaluate.load("./metrics/psnr").compute(predictions=list(noisy), references=list(clean[:1]))


# ------------------------------------------------------------------------------------------------- hf-vtok eval
def test_cli_eval_writes_the_table_pictures_and_json(folders, tmp_path, capsys):
    from hf_vtok.commands.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--tokenizer", str(folders["ddt"]), str(folders["setok"]), str(folders["slot_qformer"]),
                 "--num-images", "2", "--steps", "1", "--num-photos", "2", "--seed", "7", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "FG-ARI" in printed and "slot_qformer" in printed
    assert "TAEF2 round trip (ceiling)" in printed and "thumbnail 4x4, 3 bit" in printed and "[gate] ddt textured" in printed
    report = json.loads((out / "eval.json").read_text())
    assert set(report["tokenizers"]) == {"ddt", "setok", "slot_qformer"}
    settings = report["settings"]
    assert (settings["seed"], settings["num_images_per_style"], settings["image_size"], settings["num_inference_steps"]) == (7, 2, 64, 1)
    assert settings["commit"] and settings["gates_calibrated"] is False  # 2 scenes at 64 px: not a README figure
    assert set(report["styles"]) == {"flat", "textured"} and report["styles"]["flat"]["num_images"] == 2
    assert report["styles"]["flat"]["baselines"]["original image"]["colour_fidelity"] == 1.0
    # per style: baselines + tokenizer rows (+ same-bits thumbnails, + SeTok's chance/majority); photos: one per tokenizer
    assert sum(row.get("data") == "photos" for row in report["table"]) == 3
    ddt = report["tokenizers"]["ddt"]
    assert ddt["prefix_decoding"]["prefix_lengths"][-1] == 16 and "random_code_replacement" in ddt
    assert ddt["bits_per_image"] == 144 and ddt["styles"]["flat"]["same_bits_thumbnail"]["bits"] == 144
    assert "fg_ari" in report["tokenizers"]["setok"]["styles"]["textured"]
    # the tiny SlotQFormer here has finished stage 1 only: its ids go through an RVQ that stage 2 trains; said, and kept
    assert ("[eval] slot_qformer: WARNING: its residual VQ and rebuild block (only stage 2 trains them) are untrained"
            in printed)  # fmt: skip
    assert report["tokenizers"]["slot_qformer"]["warning"].startswith("untrained: ") and "warning" not in ddt
    assert report["tokenizers"]["setok"]["bits_per_image"] is None
    # distinct codes per image: between 1 and the 16 tokens for the discrete tokenizers, undefined for SeTok
    assert 1 <= ddt["styles"]["flat"]["distinct_ids_per_image"] <= 16
    assert report["tokenizers"]["setok"]["styles"]["flat"]["distinct_ids_per_image"] is None
    gates = report["gates"]["verdicts"]
    assert report["gates"]["total"] == len(gates) == 2 * (5 + 5 + 8)  # DDT 5, SeTok 5, SlotQFormer 8 gates per style
    assert all(isinstance(g["pass"], bool) and g["threshold"] is not None for g in gates)
    for name in ("ddt_prefix_curve.png", "ddt_counterfactual.png", "setok_photos.png", "slot_qformer_random_codes.png",
                 "setok_flat.png", "ddt_textured.png"):
        assert Image.open(out / name).size[0] > 0, name


def test_gate_verdicts_flip_when_a_threshold_is_crossed():
    from hf_vtok.evaluation import gate_verdicts

    def verdicts(model_type, style="textured", baselines=None, **metrics):
        return {v["gate"]: v["pass"] for v in gate_verdicts(model_type, style, metrics, baselines or {})}

    ddt = {"random_psnr": 12.0, "psnr_by_prefix": {"1": 14.0, "8": 16.0, "16": 19.0}, "colour_fidelity": 0.95,
           "bits_per_image": 144, "same_bits_thumbnail": {"psnr": 17.0}}
    passing = verdicts("ddt_tokenizer", psnr=19.0, **ddt)
    assert len(passing) == 5 and all(passing.values())
    assert not verdicts("ddt_tokenizer", psnr=18.4, **ddt)["PSNR >= 18.5 dB"]
    assert not verdicts("ddt_tokenizer", style="flat", psnr=19.0, **ddt)["PSNR >= 27.0 dB"]  # flat scenes ask for more
    assert not verdicts("ddt_tokenizer", psnr=19.0, **{**ddt, "random_psnr": 13.5})["random tokens decode >= 6.0 dB worse"]
    dip = {**ddt, "psnr_by_prefix": {"1": 14.0, "8": 13.0, "16": 19.0}}
    assert not verdicts("ddt_tokenizer", psnr=19.0, **dip)["PSNR rises with every prefix length (smallest rise, dB)"]
    thin = {**ddt, "same_bits_thumbnail": {"psnr": 18.0}}
    assert not verdicts("ddt_tokenizer", psnr=19.0, **thin)["beats the same-bits thumbnail by >= 1.5 dB"]
    assert not verdicts("ddt_tokenizer", psnr=19.0, **{**ddt, "colour_fidelity": 0.85})["object colour fidelity >= 90%"]
    assert not verdicts("ddt_tokenizer", psnr=19.0, **{**ddt, "random_psnr": None})["random tokens decode >= 6.0 dB worse"]

    slots = {"psnr": 18.0, "random_psnr": 13.0, "shuffled_psnr": 13.5, "colour_fidelity": 0.85, "fg_ari": 0.7,
             "bits_per_image": 128, "same_bits_thumbnail": {"psnr": 16.0}}
    baselines = {"colour k-means (k = objects + 1)": {"fg_ari": 0.65}, "fixed grid": {"fg_ari": 0.3}}
    assert all(verdicts("slot_qformer", baselines=baselines, **slots).values())
    beaten = verdicts("slot_qformer", baselines={**baselines, "fixed grid": {"fg_ari": 0.75}}, **slots)
    assert not beaten["FG-ARI above fixed grid"] and beaten["FG-ARI above colour k-means (k = objects + 1)"]
    assert not verdicts("slot_qformer", baselines=baselines, **{**slots, "shuffled_psnr": 14.5})["shuffled tokens decode >= 4.0 dB worse"]

    setok = {"psnr": 18.0, "random_psnr": 10.0, "shuffled_psnr": 11.0, "colour_fidelity": 0.9, "bits_per_image": None}
    counted = verdicts("setok", token_count={"share": 0.71}, **setok)
    assert all(counted.values()) and not any("thumbnail" in gate for gate in counted)  # continuous: no bits, no thumbnail gate
    assert not verdicts("setok", token_count={"share": 0.69}, **setok)["tokens = objects + 1 ± 1 on >= 70% of images"]
    assert verdicts("my_tokenizer", psnr=30.0) == {}


def test_random_and_shuffled_ids_go_through_the_same_decoder(folders, monkeypatch):
    import functools

    from hf_vtok.evaluation import load_scenes, measure_tokenizer

    loaded = load_tokenizer_folder(folders["ddt"])
    scenes = load_scenes("flat", 3, 64, seed=4)
    real = loaded.model.encode(loaded.image_processor(scenes.pil, return_tensors="pt").pixel_values).ids
    pipeline_class, calls = type(loaded.pipeline), []
    original_call = pipeline_class.__call__

    @functools.wraps(original_call)
    def counting_call(self, *args, **kwargs):
        calls.append((self, kwargs["token_ids"].clone(), kwargs.get("max_tokens")))
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", counting_call)
    metrics = measure_tokenizer(loaded, scenes, num_inference_steps=1, seed=0, batch_size=2)
    # 2 batches x (real ids + random + shuffled + prefixes 1, 2, 4, 8), every one through the loaded pipeline
    assert len(calls) == 2 * 7 and all(pipe is loaded.pipeline for pipe, _, _ in calls)
    first_batch = [ids for _, ids, limit in calls[:7] if limit is None]
    assert torch.equal(first_batch[0], real[:2])  # the real ids
    assert not torch.equal(first_batch[1], real[:2]) and int(first_batch[1].max()) < loaded.model.codebook_size  # random
    assert torch.equal(first_batch[2].sort(-1).values, real[:2].sort(-1).values)  # shuffled: the same ids, reordered
    assert [limit for _, _, limit in calls[3:7]] == [1, 2, 4, 8]
    assert metrics["random_psnr"] is not None and list(metrics["psnr_by_prefix"]) == ["1", "2", "4", "8", "16"]
    assert metrics["psnr_by_prefix"]["16"] == metrics["psnr"]


def test_a_sampling_sweep_narrows_the_same_measurement(folders, monkeypatch):
    """``guidance_scale`` / ``prefix_lengths`` / ``decoys`` (what training/sweep_decoder_sampling.py passes): the
    guidance reaches every decode, only the named decoys and prefixes are decoded, and those decodes are the ones a
    full run makes (same random draws, same noise), so a sweep's figures are the evaluation's."""
    import functools

    from hf_vtok.evaluation import load_scenes, measure_tokenizer

    loaded = load_tokenizer_folder(folders["ddt"])
    scenes = load_scenes("flat", 3, 64, seed=4)
    full = measure_tokenizer(loaded, scenes, num_inference_steps=1, seed=0, batch_size=2)
    pipeline_class, calls = type(loaded.pipeline), []
    original_call = pipeline_class.__call__

    @functools.wraps(original_call)
    def recording_call(self, *args, **kwargs):
        calls.append((kwargs.get("guidance_scale"), kwargs.get("max_tokens")))
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", recording_call)
    narrow = measure_tokenizer(loaded, scenes, num_inference_steps=1, seed=0, batch_size=2, keep_images=0,
                               prefix_lengths=[4], decoys=("random",))  # fmt: skip
    assert calls == [(None, None), (None, None), (None, 4)] * 2  # real, random, prefix 4 per batch
    assert (narrow["psnr"], narrow["random_psnr"]) == (full["psnr"], full["random_psnr"])
    assert narrow["psnr_by_prefix"]["4"] == full["psnr_by_prefix"]["4"] and narrow["shuffled_psnr"] is None
    assert narrow["pictures"]["originals"] == []

    calls.clear()
    guided = measure_tokenizer(loaded, scenes, num_inference_steps=1, seed=0, batch_size=2, prefix_lengths=[], decoys=(),
                               guidance_scale=4.0)  # fmt: skip
    assert calls == [(4.0, None)] * 2 and "psnr_by_prefix" not in guided and guided["random_psnr"] is None
    assert guided["psnr"] != full["psnr"]  # the guidance changed the decodes
    with pytest.raises(ValueError, match="decoys"):
        measure_tokenizer(loaded, scenes, decoys=("noise",))
    with pytest.raises(ValueError, match="decoys"):
        measure_tokenizer(loaded, scenes, decoys="random")


def test_cli_eval_reports_bad_arguments(tmp_path, capsys, monkeypatch):
    from hf_vtok.commands.cli import main
    from hf_vtok.evaluation import report

    assert main(["eval", "--tokenizer", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--tokenizer", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "tokenizer/" in capsys.readouterr().err
    monkeypatch.setattr(report, "default_tokenizer_folders", list)
    assert main(["eval", "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--num-images", "0"])


def test_continuous_decoys_decode_another_scenes_tokens_and_matched_noise():
    from types import SimpleNamespace

    from hf_vtok.evaluation.quality import decoy_tokens

    # three scenes with 2, 3 and 1 real tokens of width 4, encoded as one padded batch
    every_image = [torch.full((n, 4), float(i)) for i, n in enumerate((2, 3, 1))]
    embeddings = torch.nn.utils.rnn.pad_sequence(every_image, batch_first=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    tokens = SimpleNamespace(ids=None, embeddings=embeddings, attention_mask=mask)
    decoys = decoy_tokens(tokens, every_image, torch.Generator().manual_seed(0), slice(0, 3), None)
    shuffled = decoys["shuffled"]
    assert shuffled["attention_mask"].sum(-1).tolist() == [3, 1, 2]  # scene i gets scene i + 1's tokens
    assert shuffled["token_embeddings"][0, :3, 0].tolist() == [1.0, 1.0, 1.0] and shuffled["token_embeddings"][2, :2, 0].tolist() == [0.0, 0.0]
    random = decoys["random"]
    assert torch.equal(random["attention_mask"], mask) and random["token_embeddings"].shape == embeddings.shape
    assert not torch.equal(random["token_embeddings"], embeddings)
