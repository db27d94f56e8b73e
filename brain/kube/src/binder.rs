//! What the brain writes through the API server when it binds a pod: the
//! placement's annotations, then the Binding — in that order, so that when
//! the kubelet starts the containers the share their environment reads
//! (the downward API) is there.

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("reading pod {0}: {1}")]
    Get(String, kube::Error),
    #[error("pod {pod} is now UID {now}, not {asked}: it was deleted and made again")]
    Replaced {
        pod: String,
        asked: String,
        now: String,
    },
    #[error("annotating pod {0}: {1}")]
    Annotate(String, kube::Error),
    #[error("binding pod {0}: {1}")]
    Bind(String, kube::Error),
}

/// The API server, as the brain's binder uses it.
#[derive(Clone)]
pub struct Binder {
    client: kube::Client,
}

impl Binder {
    pub fn new(client: kube::Client) -> Binder {
        Binder { client }
    }

    /// The pod `namespace/name`, checked to be UID `uid`.
    pub async fn pod(&self, namespace: &str, name: &str, uid: &str) -> Result<Pod, BindError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = api
            .get(name)
            .await
            .map_err(|e| BindError::Get(format!("{namespace}/{name}"), e))?;
        let now = pod.metadata.uid.clone().unwrap_or_default();
        if !uid.is_empty() && now != uid {
            return Err(BindError::Replaced {
                pod: format!("{namespace}/{name}"),
                asked: uid.to_string(),
                now,
            });
        }
        Ok(pod)
    }

    /// Writes `labels` and `annotations` on the pod (a merge patch whose
    /// UID is a precondition), then binds it to `node` (a Binding,
    /// UID-checked by the API server too).
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), BindError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = format!("{namespace}/{name}");
        let patch = serde_json::json!({
            "metadata": {"uid": uid, "labels": labels, "annotations": annotations}
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| BindError::Annotate(pod.clone(), e))?;
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: (!uid.is_empty()).then(|| uid.to_string()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(|e| BindError::Bind(pod, e))?;
        Ok(())
    }
}
