"""Ensemble pipeline: one cached branch per backbone (finetune -> TTA val/test), then AUC-weighted
ensembling, evaluation and one submission, and optionally registration and promotion of the
ensemble as one model version. Adding a member trains only that member."""

from typing import Optional

from pydantic import BaseModel, ConfigDict
from zenml import pipeline

import materializers  # noqa: F401  (registers the ImageSet and Checkpoint materializers)
from cxr.data.ingest import IngestConfig
from cxr.data.preprocess import PreprocessConfig
from cxr.data.split import SplitConfig
from cxr.infer.ensemble import EnsembleConfig
from cxr.infer.tta import REFERENCE_VIEWS, ViewName
from cxr.lifecycle.promotion import PromotionConfig
from cxr.metrics.generalisation import check_set_names
from cxr.models.classifier import ModelConfig
from cxr.train.config import TrainConfig
from steps.data import check_test_inputs, ingest, preprocess_images, split_dataset
from steps.ensemble import ensemble_predictions
from steps.evaluate import evaluate
from steps.infer import submission, tta_predict
from steps.registry import promote_model, register_ensemble
from steps.train import finetune


class MemberConfig(BaseModel):
    """One ensemble member: a name (used in step names) and its model and training knobs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: ModelConfig
    train: TrainConfig = TrainConfig()


@pipeline
def ensemble_pipeline(
    data: IngestConfig,
    test_data: IngestConfig,
    members: list[MemberConfig],
    sample_submission: Optional[str] = None,
    submission_path: str = "outputs/ensemble_submission.csv",
    split: SplitConfig = SplitConfig(),
    preprocess: PreprocessConfig = PreprocessConfig(),
    ensemble: EnsembleConfig = EnsembleConfig(),
    tta_views: list[ViewName] = list(REFERENCE_VIEWS),
    registered_model_name: Optional[str] = None,
    promotion: Optional[PromotionConfig] = None,
) -> None:
    """Train each member on the same split, TTA each on val and test, ensemble, write one submission.

    Branch step names carry the member name (``finetune_<name>``), so each branch caches on
    its own. ``evaluate`` scores the ensemble; its training-curve plot shows the last member.
    With ``registered_model_name`` the ensemble becomes one registry version; with
    ``promotion`` too, it competes with that name's champion (single model or ensemble).
    """
    check_set_names({f"members[{m.name}].train.select_on": m.train.select_on for m in members}
                    | ({"promotion.holdout": promotion.holdout} if promotion else {}), split.proxy is not None, [])
    images = split_dataset(images=ingest(source=data), cfg=split)
    test_listed = ingest(source=test_data, id="ingest_test")
    check_test_inputs(images=images, test_images=test_listed, sample_submission=sample_submission)
    images = preprocess_images(images=images, cfg=preprocess)
    test_images = preprocess_images(images=test_listed, cfg=preprocess, id="preprocess_test")
    checkpoints, val_predictions, test_predictions, history = [], [], [], None
    # each member's params and curves go to its own nested MLflow run, not the pipeline's one
    member_finetune = finetune.with_options(settings={"experiment_tracker.mlflow": {"nested": True}})
    for member in members:
        checkpoint, history = member_finetune(images=images, model=member.model, train=member.train,
                                              preprocess=preprocess.model_dump(), id=f"finetune_{member.name}",
                                              after=["check_test_inputs"])
        checkpoints.append(checkpoint)
        val_predictions.append(tta_predict(checkpoint=checkpoint, images=images, subset="val", views=tta_views,
                                           id=f"tta_val_{member.name}"))
        test_predictions.append(tta_predict(checkpoint=checkpoint, images=test_images, views=tta_views,
                                            id=f"tta_test_{member.name}"))
    names = [m.name for m in members]
    val_ensemble, test_ensemble, _, weights = ensemble_predictions(names=names, val_predictions=val_predictions,
                                                                   test_predictions=test_predictions, images=images,
                                                                   cfg=ensemble)
    val_metrics, _, _, _, _, _, _ = evaluate(val_predictions=val_ensemble, images=images, history=history)
    if registered_model_name is not None:
        model_version = register_ensemble(names=names, checkpoints=checkpoints, ensemble_weights=weights,
                                          val_metrics=val_metrics, registered_model_name=registered_model_name,
                                          images=images, val_predictions=val_ensemble)
        if promotion is not None:
            promote_model(model_version=model_version, images=images, registered_model_name=registered_model_name,
                          cfg=promotion)
    submission(predictions=test_ensemble, sample_submission=sample_submission, output_path=submission_path)
