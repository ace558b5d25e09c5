"""Training pipeline: ingest -> split (train/val[/proxy]) -> preprocess -> [leakage audit against
external and test sets] -> [features -> nn_pairs -> ssl_pretrain (+ target images)] -> finetune ->
[cft_features -> cft_finetune] -> [adapt_to_target] -> TTA -> evaluate (val, proxy) ->
[evaluate_external per set] -> generalisation_report -> calibrate (calibration and operating points)
-> [robustness] -> [fit_guardrails] -> register [-> promote on the holdout] -> model_card, and, when
test data is given, TTA -> submission for it. The bracketed steps run when ``audit`` (default on), ``ssl``, ``cft``,
``adapt``, ``external``, ``robustness``, ``guardrails`` (default on) and ``promotion`` are set."""

from typing import Optional

from zenml import pipeline

import materializers  # noqa: F401  (registers the ImageSet and Checkpoint materializers)
from cxr.adapt.target import AdaptConfig, check_adapt_target
from cxr.cft.genetic import CFTConfig
from cxr.data.ingest import ExternalSet, IngestConfig
from cxr.data.leakage import AuditConfig
from cxr.data.preprocess import PreprocessConfig
from cxr.data.split import SplitConfig
from cxr.infer.guardrails import GuardrailConfig
from cxr.infer.tta import REFERENCE_VIEWS, ViewName
from cxr.lifecycle import DEFAULT_MODEL_NAME
from cxr.lifecycle.promotion import PromotionConfig
from cxr.metrics.calibration import CalibrationConfig
from cxr.metrics.drift import DriftConfig
from cxr.metrics.generalisation import ThresholdConfig, check_set_names
from cxr.metrics.operating_points import OperatingPointConfig
from cxr.metrics.robustness import RobustnessConfig
from cxr.models.classifier import ModelConfig
from cxr.ssl.pretrain import SSLConfig
from cxr.train.config import TrainConfig
from steps.data import audit_leakage, check_test_inputs, ingest, preprocess_images, split_dataset
from steps.evaluate import calibrate, evaluate, evaluate_external, generalisation_report, robustness as score_robustness
from steps.infer import submission, tta_predict
from steps.registry import model_card, promote_model, register_model
from steps.ssl import handcrafted_features, nn_pairs, ssl_pretrain, ssl_probe
from steps.train import adapt_to_target, cft_features, cft_finetune, finetune, fit_guardrails


@pipeline
def training_pipeline(
    data: IngestConfig,
    test_data: Optional[IngestConfig] = None,
    sample_submission: Optional[str] = None,
    submission_path: str = "outputs/submission.csv",
    split: SplitConfig = SplitConfig(),
    preprocess: PreprocessConfig = PreprocessConfig(),
    model: ModelConfig = ModelConfig(),
    train: TrainConfig = TrainConfig(),
    tta_views: list[ViewName] = list(REFERENCE_VIEWS),
    registered_model_name: str = DEFAULT_MODEL_NAME,
    ssl: Optional[SSLConfig] = None,
    cft: Optional[CFTConfig] = None,
    promotion: Optional[PromotionConfig] = None,
    external: list[ExternalSet] = [],
    thresholds: ThresholdConfig = ThresholdConfig(),
    audit: Optional[AuditConfig] = AuditConfig(),
    adapt: Optional[AdaptConfig] = None,
    robustness: Optional[RobustnessConfig] = None,
    guardrails: Optional[GuardrailConfig] = GuardrailConfig(),
    drift: Optional[DriftConfig] = DriftConfig(),
    calibration: Optional[CalibrationConfig] = CalibrationConfig(),
    operating_points: OperatingPointConfig = OperatingPointConfig(),
) -> None:
    """Train, evaluate and register a chest X-ray classifier; write a submission for test data.

    Args:
        data: labelled training images (split into train/val by patient).
        test_data: unlabelled images to predict for the submission (optional).
        sample_submission: CSV whose id order and columns the submission follows.
        submission_path: where the submission CSV is written.
        split: validation fraction and seed.
        preprocess: image size, resize policy, CLAHE.
        model: backbone, head, pretrained/local weights.
        train: optimisation, loss, sampling, augmentation, early stopping.
        tta_views: test-time views averaged for val metrics and the submission.
        registered_model_name: MLflow registered model that gets a new version.
        ssl: self-supervised pretraining of the backbone before the fine-tune (None: off).
        cft: category-wise GA fine-tune of the last layer after the fine-tune (None: off).
        promotion: champion/challenger decision for the new version on ``promotion.holdout``
            (None: register only).
        external: named image sets from other sites, each scored like val when labelled.
        thresholds: the split the per-label F1 thresholds are fitted on.
        audit: leakage audit across train, val, proxy, external sets and test before any
            training; ``action: fail`` stops the run on a finding (None: no audit).
        adapt: adaptation of the model to ``adapt.target`` (test or an external set) from its
            unlabelled images: AdaBN, self-training, domain-adaptive SSL (None: off).
        robustness: corruptions and severities the final model is scored under (None: off).
        guardrails: input checks fitted into the registered checkpoint, whose served predictions
            then carry ``flag`` and ``flag_reason`` (None: registered without them).
        drift: the val reference stored beside the guardrails, which the inference pipeline's
            drift check compares each new batch with (None: none; needs guardrails).
        calibration: per-label calibrator fitted on ``calibration.fit_on`` and applied to every
            prediction of the registered model and the submission (None: scores as trained).
        operating_points: per-label thresholds (F1, target sensitivity, target specificity)
            stored with the registered model, applied when a caller asks for ``operating_point``.
    """
    names = [entry.name for entry in external]
    check_set_names({"train.select_on": train.select_on, "thresholds.fit_on": thresholds.fit_on}
                    | ({"promotion.holdout": promotion.holdout} if promotion else {})
                    | ({"calibration.fit_on": calibration.fit_on} if calibration else {}),
                    split.proxy is not None, names)
    if adapt is not None:
        check_adapt_target(adapt, test_data is not None, names, ssl is not None)
    images = split_dataset(images=ingest(source=data), cfg=split)
    before_training = []
    if test_data is not None:
        test_listed = ingest(source=test_data, id="ingest_test")
        check_test_inputs(images=images, test_images=test_listed, sample_submission=sample_submission)
        before_training = ["check_test_inputs"]
    images = preprocess_images(images=images, cfg=preprocess)
    external_images = {entry.name: preprocess_images(images=ingest(source=entry.data, id=f"ingest_external_{entry.name}"),
                                                     cfg=preprocess, id=f"preprocess_external_{entry.name}")
                       for entry in external}
    test_images = None
    if test_data is not None:
        test_images = preprocess_images(images=test_listed, cfg=preprocess, id="preprocess_test")
    if audit is not None:
        others = {**external_images, **({"test": test_images} if test_images is not None else {})}
        audit_leakage(images=images, others=list(others.values()), other_names=list(others), cfg=audit)
        before_training.append("audit_leakage")
    target = None if adapt is None else test_images if adapt.target == "test" else external_images[adapt.target]
    ssl_backbone = None
    if ssl is not None:
        pairs = None
        if ssl.positives == "nn_pairs":
            pairs, _ = nn_pairs(features=handcrafted_features(images=images))
        ssl_backbone, _, _ = ssl_pretrain(images=images, backbone=model.backbone, cfg=ssl, pairs=pairs,
                                          target=target if adapt is not None and adapt.ssl else None,
                                          after=before_training)
        ssl_probe(ssl_backbone=ssl_backbone, images=images)
    checkpoint, history = finetune(images=images, model=model, train=train, preprocess=preprocess.model_dump(),
                                   ssl_backbone=ssl_backbone, after=before_training)
    if cft is not None:
        train_features, val_features = cft_features(checkpoint=checkpoint, images=images)
        checkpoint, _ = cft_finetune(checkpoint=checkpoint, images=images, train_features=train_features,
                                     val_features=val_features, cfg=cft)
    if adapt is not None:
        checkpoint, _ = adapt_to_target(checkpoint=checkpoint, images=images, target=target, cfg=adapt, train=train)
    val_predictions = tta_predict(checkpoint=checkpoint, images=images, subset="val", views=tta_views,
                                  id="tta_predict_val")
    proxy_predictions = None
    if split.proxy is not None:
        proxy_predictions = tta_predict(checkpoint=checkpoint, images=images, subset="proxy", views=tta_views,
                                        id="tta_predict_proxy")
    val_metrics, val_report, proxy_metrics, proxy_report, _, _, _ = evaluate(
        val_predictions=val_predictions, images=images, history=history, proxy_predictions=proxy_predictions,
        thresholds=thresholds, select_on=train.select_on)
    external_reports, external_predictions = [], []
    for name, part in external_images.items():
        predictions = tta_predict(checkpoint=checkpoint, images=part, views=tta_views,
                                  id=f"tta_predict_external_{name}")
        _, report = evaluate_external(predictions=predictions, images=part, name=name, val_report=val_report,
                                      id=f"evaluate_external_{name}")
        external_reports.append(report)
        external_predictions.append(predictions)
    generalisation_report(val_report=val_report, proxy_report=proxy_report, external_reports=external_reports,
                          external_names=names)
    after_robustness = []
    if robustness is not None:
        score_robustness(checkpoint=checkpoint, images=images, cfg=robustness)
        after_robustness = ["robustness"]
    checkpoint, _, _, _, _, _ = calibrate(checkpoint=checkpoint, images=images, val_predictions=val_predictions,
                                          proxy_predictions=proxy_predictions,
                                          external_predictions=external_predictions,
                                          external_images=list(external_images.values()), external_names=names,
                                          calibration=calibration, operating_points=operating_points)
    registered = checkpoint if guardrails is None else fit_guardrails(checkpoint=checkpoint, images=images,
                                                                      cfg=guardrails, drift=drift)
    model_version = register_model(checkpoint=registered, val_metrics=val_metrics, proxy_metrics=proxy_metrics,
                                   registered_model_name=registered_model_name, images=images)
    decision = None
    if promotion is not None:
        decision = promote_model(model_version=model_version, images=images,
                                 registered_model_name=registered_model_name, cfg=promotion,
                                 holdout_images=external_images.get(promotion.holdout))
    knobs = {"train": train.model_dump(), "tta_views": list(tta_views),
             "ssl": ssl.model_dump() if ssl else None, "cft": cft.model_dump() if cft else None,
             "adapt": adapt.model_dump() if adapt else None, "split": split.model_dump(),
             "operating_points": operating_points.model_dump()}
    model_card(model_version=model_version, registered_model_name=registered_model_name, checkpoint=registered,
               images=images, val_predictions=val_predictions, data_source=data.model_dump(), knobs=knobs,
               promotion=decision, after=after_robustness)
    if test_images is not None:
        predictions = tta_predict(checkpoint=checkpoint, images=test_images, views=tta_views,
                                  id="tta_predict_test")
        submission(predictions=predictions, sample_submission=sample_submission,
                   output_path=submission_path)
