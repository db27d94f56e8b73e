//! The OpenAPI document: the operations' own answers (from their
//! `utoipa::path` attributes), then [`Contract`], which adds what every
//! layer answers — 401/403 from the bearer check, 400/413/415 for bodies,
//! 400 for parameters, 414 for long URIs, 503 when the audit trail fails —
//! the validation rules of `vagus_decision::rules` on every schema and
//! parameter, and the links a client follows from a new placement.

use super::{
    __path_create_placement, __path_delete_placement, __path_get_placement, __path_get_routes,
    __path_get_session, __path_healthz, __path_list_decisions, __path_list_events,
    __path_list_nodes, __path_list_placements, __path_metrics, __path_post_control,
    __path_post_gateway_window, __path_put_node, Answer, ApiError, Events, Health, Nodes,
    Rejection, Route, Routes, Session, Workload, Workloads,
};
use crate::agents::ingest::ServingView;
use crate::audit::{self, Entry};
use crate::gateways::{Buckets, GatewayReplica, GatewayWindow, WindowTaken};
use crate::replicas::{MemoryView, ReplicaView};
use std::sync::LazyLock;
use utoipa::OpenApi;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Response, ResponseBuilder};
use vagus_decision::rules::{self, Rule};
use vagus_decision::state::{Node, Queued};
use vagus_decision::{Control, Decision, Launch, NodeSpec, Placed, Profile};

#[derive(OpenApi)]
#[openapi(
    info(title = "Vagus brain", description = "Placement decisions, the audit trail and operator controls. Every error is JSON `{\"field\", \"error\"}`."),
    paths(create_placement, get_placement, delete_placement, list_placements, list_nodes, put_node,
        list_decisions, list_events, post_control, get_session, get_routes, post_gateway_window, healthz, metrics),
    components(schemas(Profile, Launch, ReplicaView, MemoryView, ServingView, GatewayWindow, GatewayReplica, Buckets, WindowTaken, Route, Routes, Answer, Rejection, Decision, Workload, Workloads, Placed, Queued,
        Nodes, Node, NodeSpec, Entry, audit::Page, Control, ApiError, Health, Session, Events, crate::alerts::Alert)),
    modifiers(&Contract)
)]
pub struct ApiDoc;

/// The document as served, built once.
pub fn document() -> &'static serde_json::Value {
    static DOC: LazyLock<serde_json::Value> = LazyLock::new(|| {
        let mut v = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        spell_links(&mut v);
        v
    });
    &DOC
}

/// utoipa 5.5 writes a Link's fields in snake case (`operation_id`); the
/// specification's names are `operationId` and `requestBody`.
fn spell_links(v: &mut serde_json::Value) {
    let Some(paths) = v.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let responses = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|r| r.values_mut());
    for r in responses {
        let Some(links) = r.get_mut("links").and_then(|l| l.as_object_mut()) else {
            continue;
        };
        for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("request_body", "requestBody"),
            ] {
                if let Some(x) = link.remove(from) {
                    link.insert(to.into(), x);
                }
            }
        }
    }
}

struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        rules::document(doc);
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.delete, true),
            ];
            for (op, writes) in ops {
                if let Some(op) = op.as_mut() {
                    parameters(op);
                    errors(path, op, writes);
                }
            }
        }
        links(doc);
    }
}

/// The rules of each query and path parameter.
fn parameters(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        let rule = match p.name.as_str() {
            "id" => Rule::Text(rules::DNS_LABEL),
            "name" => Rule::Text(rules::DNS_SUBDOMAIN),
            "limit" => Rule::Int(rules::PAGE),
            // The trail's cursor is a sequence number, the lists' a name.
            "after"
                if matches!(
                    op.operation_id.as_deref(),
                    Some("list_decisions" | "list_events")
                ) =>
            {
                Rule::Int(rules::SEQ)
            }
            "path" => {
                if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                    o.enum_values = Some(audit::row_paths().map(Into::into).collect());
                }
                continue;
            }
            _ => Rule::Text(rules::LOOKUP),
        };
        if let Some(RefOr::T(s)) = p.schema.as_mut() {
            rules::apply_to(s, &rule);
        }
    }
}

fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ApiError")))
                .build(),
        )
        .build()
}

/// What the layers in front of each handler answer.
fn errors(path: &str, op: &mut Operation, writes: bool) {
    let mut add = |status: &str, r: Response| {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert(RefOr::T(r));
    };
    add("414", error("The path and query are longer than 8 KiB"));
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    if secured {
        let mut unauthorized = error("No bearer token, or an unknown one");
        unauthorized.headers.insert(
            "WWW-Authenticate".into(),
            HeaderBuilder::new()
                .schema(Object::with_type(Type::String))
                .description(Some(
                    "`Bearer realm=\"vagus\"`, with `error` when a token was sent",
                ))
                .build(),
        );
        add("401", unauthorized);
        add("403", error("The token's role may not do this"));
    }
    let has_body = op.request_body.is_some();
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    if has_body || has_params {
        add(
            "400",
            error("A field, parameter or body is malformed or breaks a rule; `field` names it"),
        );
    }
    if has_body {
        add("413", error("The body is larger than 1 MiB"));
        add(
            "415",
            error("The body is not sent as `Content-Type: application/json`"),
        );
    }
    // Every path, on a replica that does not lead (yet); a write or the
    // trail's read also when the trail fails.
    let follower = "this brain replica does not lead (it waits for the lease, or restores its \
                    state): the leader answers; `Retry-After` says when to ask again";
    let mut unavailable = if writes || path == "/v1/decisions" {
        error(&format!(
            "The audit trail could not store (or read) the decisions; or {follower}"
        ))
    } else {
        error(&format!(
            "{}{}",
            follower[..1].to_uppercase(),
            &follower[1..]
        ))
    };
    unavailable.headers.insert(
        "Retry-After".into(),
        HeaderBuilder::new()
            .schema(Object::with_type(Type::Integer))
            .description(Some("Seconds, on a replica that does not lead"))
            .build(),
    );
    add("503", unavailable);
}

/// From a new placement to reading and deleting it.
fn links(doc: &mut utoipa::openapi::OpenApi) {
    let Some(post) = doc
        .paths
        .paths
        .get_mut("/v1/placements")
        .and_then(|p| p.post.as_mut())
    else {
        return;
    };
    for status in ["201", "202"] {
        if let Some(RefOr::T(r)) = post.responses.responses.get_mut(status) {
            for (name, op) in [
                ("GetPlacement", "get_placement"),
                ("DeletePlacement", "delete_placement"),
            ] {
                r.links.insert(
                    name.into(),
                    RefOr::T(
                        LinkBuilder::new()
                            .operation_id(op)
                            .parameter("id", "$response.body#/id")
                            .build(),
                    ),
                );
            }
        }
    }
}
