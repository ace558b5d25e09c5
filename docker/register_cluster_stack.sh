#!/usr/bin/env bash
# Register the cluster stack: Kubernetes orchestrator (GPU nodes), S3-compatible artifact
# store, remote MLflow tracking server + registry, a container registry and a local image
# builder. Idempotent per name; run once per ZenML server.
#
#   KUBE_CONTEXT=gke_prod ARTIFACT_STORE=s3://hospital-ml/zenml \
#   MLFLOW_URI=https://mlflow.hospital.org REGISTRY_URI=registry.hospital.org/cxr \
#   docker/register_cluster_stack.sh
#
# MLflow credentials come from a ZenML secret: zenml secret create mlflow --username=... --password=...
set -euo pipefail

: "${KUBE_CONTEXT:?set KUBE_CONTEXT to the kubectl context of the cluster}"
: "${ARTIFACT_STORE:?set ARTIFACT_STORE to an s3:// path}"
: "${MLFLOW_URI:?set MLFLOW_URI to the MLflow tracking server}"
: "${REGISTRY_URI:?set REGISTRY_URI to the container registry}"
NAMESPACE="${NAMESPACE:-cxr}"
STACK="${STACK:-cxr_cluster}"

zenml integration install kubernetes s3 mlflow -y
zenml orchestrator register cxr_k8s --flavor=kubernetes \
    --kubernetes_context="$KUBE_CONTEXT" --kubernetes_namespace="$NAMESPACE"
zenml artifact-store register cxr_s3 --flavor=s3 --path="$ARTIFACT_STORE"
zenml experiment-tracker register cxr_mlflow_remote --flavor=mlflow --tracking_uri="$MLFLOW_URI" \
    --tracking_username='{{mlflow.username}}' --tracking_password='{{mlflow.password}}'
zenml model-registry register cxr_mlflow_registry_remote --flavor=mlflow
zenml container-registry register cxr_registry --flavor=default --uri="$REGISTRY_URI"
zenml image-builder register cxr_local_builder --flavor=local
zenml stack register "$STACK" -o cxr_k8s -a cxr_s3 -e cxr_mlflow_remote -r cxr_mlflow_registry_remote \
    -c cxr_registry -i cxr_local_builder
echo "registered stack $STACK; activate it with: zenml stack set $STACK"
