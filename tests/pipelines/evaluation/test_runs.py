"""What every task's run evaluation shares: the model card's explanation-checks section."""

from __future__ import annotations

from pathlib import Path

from medlens.pipelines.evaluation.runs import write_checks_to_card

CHECKS = {
    "images": 8, "fail_at": 0.5,
    "methods": {"gradcam": {"title": "Grad-CAM", "verdict": "pass", "final_spearman": 0.0412,
                            "stages": [{"spearman": 0.8123}, {"spearman": 0.1}]},
                "guided": {"title": "Guided backprop", "verdict": "fail", "final_spearman": 0.9001,
                           "stages": [{"spearman": 0.99}]}},
    "data_randomisation": {"images": 8, "fail_at": 0.5, "model": "runs/shuffled",
                           "methods": {"gradcam": {"title": "Grad-CAM", "verdict": "pass", "spearman": 0.2,
                                                   "ssim": 0.31, "hog": 0.456}}},
}


def test_the_checks_section_is_added_once_and_replaced_on_a_rerun(tmp_path: Path) -> None:
    (tmp_path / "model_card.md").write_text("# Model card: demo\n\n## Model\n- Backbone: small_cnn\n")
    write_checks_to_card(tmp_path, CHECKS)
    card = (tmp_path / "model_card.md").read_text()
    assert card.startswith("# Model card: demo\n\n## Model\n- Backbone: small_cnn\n\n## Explanation checks\n")
    assert "| method | Spearman after the head | after full randomisation | verdict |\n|---|---|---|---|\n" in card
    assert "| Grad-CAM | 0.812 | 0.041 | **pass** |\n| Guided backprop | 0.990 | 0.900 | **fail** |\n" in card
    assert "| method | Spearman | SSIM | HOG | verdict |\n|---|---|---|---|---|\n| Grad-CAM | 0.200 | 0.310 | 0.456 | **pass** |" in card
    assert "trained on shuffled labels (`runs/shuffled`)" in card and "mean Spearman rank correlation ≥ 0.5" in card

    only_cascade = {k: v for k, v in CHECKS.items() if k != "data_randomisation"}
    write_checks_to_card(tmp_path, only_cascade)  # a rerun replaces the section, never appends a second
    again = (tmp_path / "model_card.md").read_text()
    assert again.count("## Explanation checks") == 1 and "Data randomisation" not in again
    assert again.startswith("# Model card: demo\n\n## Model\n- Backbone: small_cnn\n\n## Explanation checks\n")
