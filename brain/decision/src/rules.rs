//! The bounds and formats request fields must keep, defined once: the
//! types' `validate` methods enforce these constants, and [`document`]
//! writes the same constants into the OpenAPI document's schemas, so what
//! a client reads is what the brain checks.
//!
//! Names that become Kubernetes objects follow Kubernetes' rules: a
//! workload or tenant is a DNS-1123 label, a node a DNS-1123 subdomain,
//! label keys and values Kubernetes' label syntax. Counts and sizes are
//! bounded by what a real cluster can have.

use crate::workload::Invalid;
use std::sync::LazyLock;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::{OpenApi, RefOr};

/// An integer range (inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Int {
    pub min: u64,
    pub max: u64,
}

impl Int {
    pub fn check(&self, field: &str, v: u64) -> Result<(), Invalid> {
        if (self.min..=self.max).contains(&v) {
            Ok(())
        } else {
            Err(Invalid::new(
                field,
                &format!("must be {} to {}", self.min, self.max),
            ))
        }
    }
}

/// A number range; `above` makes the minimum exclusive.
#[derive(Clone, Copy, Debug)]
pub struct Num {
    pub min: f64,
    pub above: bool,
    pub max: f64,
}

impl Num {
    pub fn check(&self, field: &str, v: f64) -> Result<(), Invalid> {
        let low = if self.above {
            v > self.min
        } else {
            v >= self.min
        };
        if v.is_finite() && low && v <= self.max {
            Ok(())
        } else {
            let op = if self.above { "above" } else { "from" };
            Err(Invalid::new(
                field,
                &format!("must be a number {op} {} to {}", self.min, self.max),
            ))
        }
    }
}

/// A string: its length in characters and the pattern it matches.
#[derive(Clone, Copy, Debug)]
pub struct Text {
    pub min: usize,
    pub max: usize,
    pub pattern: &'static str,
    /// What the pattern allows, in words (for the error).
    pub means: &'static str,
}

impl Text {
    pub fn check(&self, field: &str, v: &str) -> Result<(), Invalid> {
        let n = v.chars().count();
        if n < self.min || n > self.max {
            return Err(Invalid::new(
                field,
                &format!("must be {} to {} characters (is {n})", self.min, self.max),
            ));
        }
        if !matches(self.pattern, v) {
            return Err(Invalid::new(field, &format!("must be {}", self.means)));
        }
        Ok(())
    }
}

/// A list's (or map's) most entries.
#[derive(Clone, Copy, Debug)]
pub struct Items {
    pub max: usize,
}

impl Items {
    pub fn check(&self, field: &str, n: usize) -> Result<(), Invalid> {
        if n <= self.max {
            Ok(())
        } else {
            Err(Invalid::new(
                field,
                &format!("has {n} entries; at most {}", self.max),
            ))
        }
    }
}

/// A workload's or tenant's name: a DNS-1123 label.
pub const DNS_LABEL: Text = Text {
    min: 1,
    max: 63,
    pattern: "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
    means: "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
};

/// A node's name: a DNS-1123 subdomain.
pub const DNS_SUBDOMAIN: Text = Text {
    min: 1,
    max: 253,
    pattern: "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$",
    means: "a DNS-1123 subdomain: dot-separated labels of lowercase letters, digits and '-'",
};

/// A label key: an optional DNS subdomain prefix and `/`, then a name of
/// letters, digits, `-`, `_`, `.` (≤ 63).
pub const LABEL_KEY: Text = Text {
    min: 1,
    max: 253,
    pattern: "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
    means: "a Kubernetes label key: [prefix/]name, the name letters, digits, '-', '_', '.' (≤ 63)",
};

pub const LABEL_VALUE: Text = Text {
    min: 0,
    max: 63,
    pattern: "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
    means: "a Kubernetes label value: letters, digits, '-', '_', '.', starting and ending with a letter or digit",
};

/// A model's id (`meta-llama/Llama-3.1-8B-Instruct`).
pub const MODEL_ID: Text = Text {
    min: 1,
    max: 253,
    pattern: "^[A-Za-z0-9]([-A-Za-z0-9._/:@+]*[A-Za-z0-9])?$",
    means: "letters, digits and '-', '.', '_', '/', ':', '@', '+', starting and ending with a letter or digit",
};

/// A GPU's name as NVML gives it (`NVIDIA H100 80GB HBM3`), or a family.
pub const GPU_MODEL: Text = Text {
    min: 1,
    max: 96,
    pattern: "^[A-Za-z0-9]([-A-Za-z0-9 ._()/+]*[A-Za-z0-9)])?$",
    means: "a GPU name: letters, digits, spaces and '-', '.', '_', '(', ')', '/', '+'",
};

/// A data-locality hint: a node's name or a `key=value` node label.
pub const LOCALITY: Text = Text {
    min: 1,
    max: 317,
    pattern: "^[A-Za-z0-9]([-A-Za-z0-9_./=]*[A-Za-z0-9])?$",
    means: "a node name or a node label `key=value`",
};

/// A container image reference: printable ASCII, no spaces.
pub const IMAGE: Text = Text {
    min: 1,
    max: 1024,
    pattern: "^[!-~]+$",
    means: "an image reference: printable ASCII without spaces",
};

/// A replica's executable: printable ASCII without spaces.
pub const LAUNCH_COMMAND: Text = Text {
    min: 1,
    max: 1024,
    pattern: "^[!-~]+$",
    means: "a command: printable ASCII without spaces",
};

/// One argument: printable ASCII.
pub const LAUNCH_ARG: Text = Text {
    min: 0,
    max: 4096,
    pattern: "^[ -~]*$",
    means: "printable ASCII",
};

pub const LAUNCH_ARGS: Items = Items { max: 256 };
pub const LAUNCH_ENV: Items = Items { max: 128 };

/// An environment variable's name, as POSIX shells take them.
pub const ENV_NAME: Text = Text {
    min: 1,
    max: 256,
    pattern: "^[A-Za-z_][A-Za-z0-9_]*$",
    means: "a variable name: letters, digits and `_`, not starting with a digit",
};

pub const ENV_VALUE: Text = Text {
    min: 0,
    max: 4096,
    pattern: "^[ -~]*$",
    means: "printable ASCII",
};

pub const PORT: Int = Int { min: 1, max: 65535 };
/// A replica's routing weight.
pub const ROUTE_WEIGHT: Int = Int { min: 0, max: 1000 };

/// A gateway's report: its window (at most a minute), the replicas it
/// forwarded to, their buckets, and what one window can count.
pub const WINDOW_MS: Int = Int {
    min: 1,
    max: 60_000,
};
pub const GATEWAY_REPLICAS: Items = Items { max: 4096 };
/// Finite bounds, and counts (one more: `+Inf`).
pub const BUCKET_BOUNDS: Items = Items { max: 255 };
pub const BUCKET_COUNTS: Items = Items { max: 256 };
/// Requests in one window (a billion a minute is beyond any gateway).
pub const WINDOW_COUNT: Int = Int {
    min: 0,
    max: 1_000_000_000,
};
/// Prompt tokens of one window's requests (a million tokens each at most).
pub const WINDOW_TOKENS: Int = Int {
    min: 0,
    max: 1_000_000_000_000_000,
};
/// A bucket's upper bound, seconds (up to a day).
pub const BUCKET_BOUND_S: Num = Num {
    min: 0.0,
    above: true,
    max: 86_400.0,
};
/// A window's summed latency, seconds.
pub const LATENCY_SUM_S: Num = Num {
    min: 0.0,
    above: false,
    max: 1e15,
};

/// Free text that is looked up, not stored (query filters).
pub const LOOKUP: Text = Text {
    min: 1,
    max: 253,
    pattern: "^[!-~]+$",
    means: "printable ASCII without spaces",
};

pub const MODEL_SIZE_GB: Num = Num {
    min: 0.0,
    above: false,
    max: 10_000.0,
};
pub const BATCH: Int = Int {
    min: 1,
    max: 65_536,
};
/// Tokens of context (a million is the longest any model serves).
pub const SEQ_LEN: Int = Int {
    min: 1,
    max: 1 << 20,
};
/// At most an hour.
pub const SLA_MS: Int = Int {
    min: 1,
    max: 3_600_000,
};
/// At most a year.
pub const DURATION_S: Int = Int {
    min: 1,
    max: 31_536_000,
};
/// A workload's CPU (0: none asked for) and a node's (≥ 1): at most 4096
/// cores.
pub const CPU_MILLI: Int = Int {
    min: 0,
    max: 4_096_000,
};
pub const NODE_CPU_MILLI: Int = Int {
    min: 1,
    max: 4_096_000,
};
/// At most 64 TiB.
pub const MEMORY_MIB: Int = Int {
    min: 0,
    max: 64 << 20,
};
pub const NODE_MEMORY_MIB: Int = Int {
    min: 1,
    max: 64 << 20,
};
/// GPUs one workload asks for on one node.
pub const WORKLOAD_GPUS: Int = Int { min: 0, max: 16 };
pub const SHARE_PCT: Int = Int { min: 1, max: 100 };
pub const COST_PER_HOUR: Num = Num {
    min: 0.0,
    above: false,
    max: 1_000_000.0,
};
pub const HINTS: Items = Items { max: 32 };
/// GPUs a node declares (the largest systems have 72).
pub const NODE_GPUS: Items = Items { max: 256 };
pub const GPU_INDEX: Int = Int { min: 0, max: 255 };
pub const LABELS: Items = Items { max: 64 };
pub const GPU_SMS: Int = Int { min: 1, max: 1024 };
pub const GPU_MEMORY_GB: Num = Num {
    min: 0.0,
    above: true,
    max: 4096.0,
};
pub const GPU_TDP_W: Num = Num {
    min: 0.0,
    above: true,
    max: 10_000.0,
};
/// Milliseconds of the brain's clock (JSON's safe integers).
pub const TIME_MS: Int = Int {
    min: 0,
    max: (1 << 53) - 1,
};
/// `GET` lists: a page's size.
pub const PAGE: Int = Int { min: 1, max: 1000 };
/// Audit-trail sequence numbers (paging cursor).
pub const SEQ: Int = Int {
    min: 0,
    max: (1 << 53) - 1,
};

/// Whether `v` matches `pattern` (one of the constants above).
fn matches(pattern: &'static str, v: &str) -> bool {
    static COMPILED: LazyLock<Vec<(&'static str, regex_lite::Regex)>> = LazyLock::new(|| {
        ALL_TEXT
            .iter()
            .map(|t| {
                (
                    t.pattern,
                    regex_lite::Regex::new(t.pattern).expect("the rules' patterns compile"),
                )
            })
            .collect()
    });
    COMPILED
        .iter()
        .find(|(p, _)| std::ptr::eq(*p, pattern) || *p == pattern)
        .is_some_and(|(_, r)| r.is_match(v))
}

const ALL_TEXT: &[Text] = &[
    DNS_LABEL,
    DNS_SUBDOMAIN,
    LABEL_KEY,
    LABEL_VALUE,
    MODEL_ID,
    GPU_MODEL,
    LOCALITY,
    IMAGE,
    LOOKUP,
    LAUNCH_COMMAND,
    LAUNCH_ARG,
    ENV_NAME,
    ENV_VALUE,
];

/// One field's rule, as the document shows it.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    Int(Int),
    Num(Num),
    Text(Text),
    /// A list: its length, and each item's rule.
    List(Items, Option<Text>),
    /// A string map: its size, its keys' and values' rules.
    Map(Items, Text, Text),
}

/// Where each rule applies: (component schema, property, rule). A property
/// of a `oneOf` (the controls) takes the rule in every variant having it.
pub const FIELDS: &[(&str, &str, Rule)] = &[
    ("Profile", "name", Rule::Text(DNS_LABEL)),
    ("Profile", "model_id", Rule::Text(MODEL_ID)),
    ("Profile", "model_size_gb", Rule::Num(MODEL_SIZE_GB)),
    ("Profile", "gpu_memory_gb", Rule::Num(GPU_MEMORY_GB)),
    ("Profile", "batch", Rule::Int(BATCH)),
    ("Profile", "seq_len", Rule::Int(SEQ_LEN)),
    ("Profile", "sla_ms", Rule::Int(SLA_MS)),
    ("Profile", "tenant", Rule::Text(DNS_LABEL)),
    ("Profile", "expected_duration_s", Rule::Int(DURATION_S)),
    ("Profile", "locality", Rule::List(HINTS, Some(LOCALITY))),
    (
        "Profile",
        "accepted_models",
        Rule::List(HINTS, Some(GPU_MODEL)),
    ),
    ("Profile", "cpu_milli", Rule::Int(CPU_MILLI)),
    ("Profile", "memory_mib", Rule::Int(MEMORY_MIB)),
    ("Profile", "gpus", Rule::Int(WORKLOAD_GPUS)),
    ("Profile", "share_pct", Rule::Int(SHARE_PCT)),
    ("Profile", "max_cost_per_hour", Rule::Num(COST_PER_HOUR)),
    ("Profile", "image", Rule::Text(IMAGE)),
    ("Launch", "command", Rule::Text(LAUNCH_COMMAND)),
    ("Launch", "args", Rule::List(LAUNCH_ARGS, Some(LAUNCH_ARG))),
    ("Launch", "env", Rule::Map(LAUNCH_ENV, ENV_NAME, ENV_VALUE)),
    ("Launch", "port", Rule::Int(PORT)),
    ("NodeSpec", "name", Rule::Text(DNS_SUBDOMAIN)),
    ("NodeSpec", "cpu_milli", Rule::Int(NODE_CPU_MILLI)),
    ("NodeSpec", "memory_mib", Rule::Int(NODE_MEMORY_MIB)),
    (
        "NodeSpec",
        "labels",
        Rule::Map(LABELS, LABEL_KEY, LABEL_VALUE),
    ),
    ("NodeSpec", "gpus", Rule::List(NODE_GPUS, None)),
    ("GpuSpec", "model", Rule::Text(GPU_MODEL)),
    ("GpuSpec", "sms", Rule::Int(GPU_SMS)),
    ("GpuSpec", "memory_gb", Rule::Num(GPU_MEMORY_GB)),
    ("GpuSpec", "tdp_w", Rule::Num(GPU_TDP_W)),
    ("Control", "node", Rule::Text(DNS_SUBDOMAIN)),
    ("Control", "workload", Rule::Text(DNS_LABEL)),
    ("Control", "gpu", Rule::Int(GPU_INDEX)),
    ("Control", "from_ms", Rule::Int(TIME_MS)),
    ("Control", "to_ms", Rule::Int(TIME_MS)),
    ("Control", "weight", Rule::Int(ROUTE_WEIGHT)),
    ("GatewayWindow", "duration_ms", Rule::Int(WINDOW_MS)),
    (
        "GatewayWindow",
        "replicas",
        Rule::List(GATEWAY_REPLICAS, None),
    ),
    ("GatewayReplica", "model", Rule::Text(MODEL_ID)),
    ("GatewayReplica", "placement", Rule::Text(DNS_LABEL)),
    ("GatewayReplica", "requests", Rule::Int(WINDOW_COUNT)),
    ("GatewayReplica", "errors", Rule::Int(WINDOW_COUNT)),
    ("GatewayReplica", "in_flight", Rule::Int(WINDOW_COUNT)),
    ("GatewayReplica", "sized", Rule::Int(WINDOW_COUNT)),
    ("GatewayReplica", "prompt_tokens", Rule::Int(WINDOW_TOKENS)),
    ("Buckets", "bounds_s", Rule::List(BUCKET_BOUNDS, None)),
    ("Buckets", "counts", Rule::List(BUCKET_COUNTS, None)),
    ("Buckets", "sum_s", Rule::Num(LATENCY_SUM_S)),
    ("Buckets", "count", Rule::Int(WINDOW_COUNT)),
];

/// Writes [`FIELDS`] into the document's component schemas. Panics if a
/// named schema or property is missing: the table and the types agree, or
/// the document is not built (a test builds it).
pub fn document(doc: &mut OpenApi) {
    let comps = doc.components.as_mut().expect("components");
    for (schema, field, rule) in FIELDS {
        let s = comps
            .schemas
            .get_mut(*schema)
            .unwrap_or_else(|| panic!("no schema {schema}"));
        let mut found = 0;
        each_object(s, &mut |o| {
            if let Some(RefOr::T(p)) = o.properties.get_mut(*field) {
                apply(p, rule);
                found += 1;
            }
        });
        assert!(found > 0, "{schema} has no property {field}");
    }
}

/// Sets a query or path parameter's schema to `rule`.
pub fn apply_to(s: &mut Schema, rule: &Rule) {
    apply(s, rule)
}

fn each_object(s: &mut RefOr<Schema>, f: &mut impl FnMut(&mut Object)) {
    match s {
        RefOr::T(Schema::Object(o)) => f(o),
        RefOr::T(Schema::OneOf(one)) => {
            for item in &mut one.items {
                each_object(item, f);
            }
        }
        RefOr::T(Schema::AllOf(all)) => {
            for item in &mut all.items {
                each_object(item, f);
            }
        }
        _ => {}
    }
}

fn apply(s: &mut Schema, rule: &Rule) {
    match (s, rule) {
        (Schema::Object(o), Rule::Int(r)) => {
            o.minimum = Some(r.min.into());
            o.maximum = Some(r.max.into());
        }
        (Schema::Object(o), Rule::Num(r)) => {
            if r.above {
                o.exclusive_minimum = Some(r.min.into());
            } else {
                o.minimum = Some(r.min.into());
            }
            o.maximum = Some(r.max.into());
        }
        (Schema::Object(o), Rule::Text(t)) => text(o, t),
        (Schema::Array(a), Rule::List(n, item)) => {
            a.max_items = Some(n.max);
            if let (Some(t), utoipa::openapi::schema::ArrayItems::RefOrSchema(s)) =
                (item, &mut a.items)
                && let RefOr::T(Schema::Object(o)) = s.as_mut()
            {
                text(o, t);
            }
        }
        (Schema::Object(o), Rule::Map(n, k, v)) => {
            o.max_properties = Some(n.max);
            let mut key = Object::with_type(utoipa::openapi::schema::Type::String);
            text(&mut key, k);
            o.property_names = Some(Box::new(Schema::Object(key)));
            let mut value = Object::with_type(utoipa::openapi::schema::Type::String);
            text(&mut value, v);
            o.additional_properties = Some(Box::new(
                utoipa::openapi::schema::AdditionalProperties::RefOr(RefOr::T(Schema::Object(
                    value,
                ))),
            ));
        }
        // `Option<T>`'s schema (`oneOf: [null, T]`) or a nested one.
        (Schema::OneOf(one), r) => {
            for item in &mut one.items {
                if let RefOr::T(s) = item {
                    apply(s, r);
                }
            }
        }
        (_, r) => panic!("rule {r:?} does not fit its property's schema"),
    }
}

fn text(o: &mut Object, t: &Text) {
    if o.schema_type == utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::Type::Null) {
        return;
    }
    o.min_length = Some(t.min);
    o.max_length = Some(t.max);
    o.pattern = Some(t.pattern.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubernetes() {
        let ok = |t: &Text, v: &str| t.check("f", v).is_ok();
        assert!(ok(&DNS_LABEL, "svc-a1"));
        assert!(!ok(&DNS_LABEL, "Svc"));
        assert!(!ok(&DNS_LABEL, "-a"));
        assert!(!ok(&DNS_LABEL, "a-"));
        assert!(!ok(&DNS_LABEL, &"a".repeat(64)));
        assert!(ok(&DNS_SUBDOMAIN, "node-a.rack-1.example"));
        assert!(!ok(&DNS_SUBDOMAIN, "node/a"));
        assert!(!ok(&DNS_SUBDOMAIN, "nöde"));
        assert!(!ok(&DNS_SUBDOMAIN, "a..b"));
        assert!(ok(&LABEL_KEY, "topology.kubernetes.io/zone"));
        assert!(ok(&LABEL_KEY, "rack"));
        assert!(!ok(&LABEL_KEY, "a/b/c"));
        assert!(ok(&LABEL_VALUE, ""));
        assert!(ok(&LABEL_VALUE, "us-east-1a"));
        assert!(!ok(&LABEL_VALUE, "a b"));
        assert!(ok(&MODEL_ID, "meta-llama/Llama-3.1-8B-Instruct"));
        assert!(ok(&GPU_MODEL, "NVIDIA H100 80GB HBM3"));
        assert!(ok(&GPU_MODEL, "T4"));
        assert!(!ok(&GPU_MODEL, "H100\n"));
        assert!(ok(&IMAGE, "vllm/vllm-openai:v0.6.3@sha256:abc"));
        assert!(!ok(&IMAGE, "a b"));
        assert!(!ok(&IMAGE, &"a".repeat(1025)));
    }

    #[test]
    fn every_text_rule_is_compiled() {
        for (_, _, r) in FIELDS {
            let texts: Vec<&Text> = match r {
                Rule::Text(t) => vec![t],
                Rule::List(_, Some(t)) => vec![t],
                Rule::Map(_, k, v) => vec![k, v],
                _ => vec![],
            };
            for t in texts {
                assert!(
                    ALL_TEXT.iter().any(|a| a.pattern == t.pattern),
                    "{} is not in ALL_TEXT",
                    t.pattern
                );
            }
        }
    }
}
