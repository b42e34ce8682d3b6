//! Reading a flagd flag-definition document into a [`FlagSet`]: structure checks, per-flag
//! validation and targeting compilation, with every problem reported at its JSON path.

use serde_json::{Map, Value};

use crate::context::kind_of;
use crate::diagnostic::{DefinitionError, Diagnostic, Diagnostics, LimitKind, Path, Severity};
use crate::flag::{BrokenFlag, Entry, Flag, FlagState, Metadata, Variant, VariantKind};
use crate::flag_set::FlagSet;
use crate::json_text::parse_document;
use crate::limits::{Limits, shown};
use crate::targeting::{Budget, Compiler, FractionalMode};

/// Which of flagd's two document schemas applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// flagd's daemon configuration (`flagd.json`): `flags` is a map or an array of flags with a
    /// `key`. What Bunting reads from files and the admin API.
    #[default]
    Flagd,
    /// The provider schema (`flags.json`): `flags` must be a map. What in-process providers read.
    Provider,
}

impl Dialect {
    /// The dialect a document declares through `$schema`, if it names one of flagd's schemas.
    pub fn declared_by(document: &Value) -> Option<Dialect> {
        let schema = document.get("$schema")?.as_str()?;
        if schema.ends_with("flagd.json") {
            Some(Dialect::Flagd)
        } else if schema.ends_with("flags.json") {
            Some(Dialect::Provider)
        } else {
            None
        }
    }
}

/// How to read a document. Construct with `..CompileOptions::default()` so new options keep their
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompileOptions {
    pub dialect: Dialect,
    pub fractional: FractionalMode,
    /// What one evaluation may cost; carried by the compiled `FlagSet`. Rules that must exceed it
    /// whatever the context (visible in their constants) are refused when compiled.
    pub budget: Budget,
    /// How large a document may be.
    pub limits: Limits,
}

/// A compiled flag set and everything worth telling its author.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub flag_set: FlagSet,
    /// Errors (the flag resolves `PARSE_ERROR`) and warnings (served the way flagd serves it), in
    /// document order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The flag set if the definition is clean; otherwise every problem found. For sources that
    /// must not serve a definition with problems in it (the admin API, a watched file).
    pub fn into_clean(self) -> Result<FlagSet, Vec<Diagnostic>> {
        if self.diagnostics.is_empty() {
            Ok(self.flag_set)
        } else {
            Err(self.diagnostics)
        }
    }
}

/// Compiles a flag-definition document given as JSON text: refused whole if it is larger than
/// `options.limits.max_document_bytes` or repeats a key in any object (see [`parse_document`]).
pub fn compile(json: &str, options: &CompileOptions) -> Result<Compiled, DefinitionError> {
    // Checked on the text, before parsing: the cheapest place to refuse a huge document.
    if json.len() > options.limits.max_document_bytes {
        return Err(DefinitionError::Limit {
            kind: LimitKind::DocumentBytes,
            found: json.len(),
            limit: options.limits.max_document_bytes,
        });
    }
    let document = parse_document(json)?;
    compile_value(&document, options)
}

/// Compiles a flag-definition document already parsed as JSON. A `Value` has already lost any
/// repeated keys and its text's size, so those two checks are [`compile`]'s; prefer it for text.
pub fn compile_value(
    document: &Value,
    options: &CompileOptions,
) -> Result<Compiled, DefinitionError> {
    let shape = |path: &str, message: String| DefinitionError::Shape {
        path: path.to_owned(),
        message,
    };
    let Value::Object(root) = document else {
        return Err(shape(
            "",
            format!(
                "a flag definition is a JSON object, found {}",
                kind_of(document)
            ),
        ));
    };
    let raw_flags: Vec<(String, Path, &Value)> = match root.get("flags") {
        None => return Err(shape("flags", "required".to_owned())),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), Path::root("flags").key(k), v))
            .collect(),
        Some(Value::Array(items)) if options.dialect == Dialect::Flagd => {
            array_flags(items).map_err(|(path, message)| shape(&path, message))?
        }
        Some(Value::Array(_)) => {
            return Err(shape(
                "flags",
                "the provider schema takes flags as a map of key to flag; the array form is flagd's own"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(shape(
                "flags",
                format!("must be a map of key to flag, found {}", kind_of(other)),
            ));
        }
    };
    let limits = &options.limits;
    if raw_flags.len() > limits.max_flags {
        return Err(DefinitionError::Limit {
            kind: LimitKind::Flags,
            found: raw_flags.len(),
            limit: limits.max_flags,
        });
    }
    let evaluators = match root.get("$evaluators") {
        None => None,
        Some(Value::Object(map)) if map.len() > limits.max_evaluators => {
            return Err(DefinitionError::Limit {
                kind: LimitKind::Evaluators,
                found: map.len(),
                limit: limits.max_evaluators,
            });
        }
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            return Err(shape(
                "$evaluators",
                format!("must be a map of name to rule, found {}", kind_of(other)),
            ));
        }
    };

    let mut diags = Diagnostics::default();
    let set_metadata = metadata(root.get("metadata"), &Path::root("metadata"), &mut diags);
    let mut compiler = Compiler::new(evaluators, options.fractional, options.budget);
    compiler.compile_evaluators(&mut diags);

    let mut entries: Vec<Entry> = Vec::with_capacity(raw_flags.len());
    let mut seen = std::collections::HashSet::new();
    let mut flags_map = Map::new();
    for (key, path, raw) in raw_flags {
        if !seen.insert(key.clone()) {
            diags.error(
                &path,
                format!("flag key {:?} is defined more than once", shown(&key)),
            );
            continue;
        }
        flags_map.insert(key.clone(), without_key(raw));
        if key.len() > limits.max_flag_key_bytes {
            entries.push(over_long_key(&key, raw, &set_metadata, limits, &mut diags));
            continue;
        }
        entries.push(compile_flag(
            &key,
            raw,
            &path,
            &set_metadata,
            limits,
            &mut compiler,
            &mut diags,
        ));
    }

    // The provider form: what flagd's sync protocol sends to in-process providers.
    let mut provider_document = Map::new();
    provider_document.insert("flags".into(), Value::Object(flags_map));
    if let Some(evaluators) = evaluators {
        provider_document.insert("$evaluators".into(), Value::Object(evaluators.clone()));
    }
    if !set_metadata.is_empty() {
        provider_document.insert("metadata".into(), Value::Object(set_metadata.clone()));
    }

    Ok(Compiled {
        flag_set: FlagSet::new(
            entries,
            set_metadata,
            Value::Object(provider_document),
            options.budget,
        ),
        diagnostics: diags.0,
    })
}

type ShapeProblem = (String, String);

fn array_flags(items: &[Value]) -> Result<Vec<(String, Path, &Value)>, ShapeProblem> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = Path::root("flags").index(i);
            match item.get("key") {
                Some(Value::String(key)) if !key.is_empty() => Ok((key.clone(), path, item)),
                Some(other) => Err((
                    path.key("key").as_str().to_owned(),
                    format!("must be a non-empty string, found {other}"),
                )),
                None => Err((
                    path.as_str().to_owned(),
                    "a flag in the array form needs a \"key\"".to_owned(),
                )),
            }
        })
        .collect()
}

/// A flag whose key is over `max_flag_key_bytes`: an error diagnostic and a `BrokenFlag`, like any
/// other problem confined to one flag, but nothing else of it is compiled, so no diagnostic path
/// repeats the key whole (the path and the message show its first 256 bytes).
fn over_long_key(
    key: &str,
    raw: &Value,
    set_metadata: &Metadata,
    limits: &Limits,
    diags: &mut Diagnostics,
) -> Entry {
    let message = format!(
        "flag key {:?} is {} bytes, over the limit of {} bytes (max_flag_key_bytes)",
        shown(key),
        key.len(),
        limits.max_flag_key_bytes
    );
    let path = Path::root("flags").key(&shown(key));
    diags.error(&path, message.clone());
    Entry::Broken(BrokenFlag {
        key: key.into(),
        problem: format!("{}: {message}", path.as_str()),
        metadata: own_metadata(raw, set_metadata),
    })
}

fn own_metadata(raw: &Value, set_metadata: &Metadata) -> Metadata {
    raw.get("metadata")
        .and_then(Value::as_object)
        .map(|own| overlay(set_metadata, own))
        .unwrap_or_else(|| set_metadata.clone())
}

fn without_key(raw: &Value) -> Value {
    let mut flag = raw.clone();
    if let Value::Object(map) = &mut flag {
        map.remove("key");
    }
    flag
}

fn compile_flag(
    key: &str,
    raw: &Value,
    path: &Path,
    set_metadata: &Metadata,
    limits: &Limits,
    compiler: &mut Compiler<'_>,
    diags: &mut Diagnostics,
) -> Entry {
    let mark = diags.len();
    let flag = match raw {
        Value::Object(def) => {
            compile_flag_object(key, def, path, set_metadata, limits, compiler, diags)
        }
        other => {
            diags.error(
                path,
                format!("a flag is a JSON object, found {}", kind_of(other)),
            );
            None
        }
    };
    let problem = diags
        .errors_since(mark)
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect::<Vec<_>>();
    match flag {
        Some(flag) if problem.is_empty() => Entry::Ready(flag),
        _ => {
            let metadata = own_metadata(raw, set_metadata);
            Entry::Broken(BrokenFlag {
                key: key.into(),
                problem: if problem.is_empty() {
                    "invalid definition".to_owned()
                } else {
                    problem.join("; ")
                },
                metadata,
            })
        }
    }
}

fn compile_flag_object(
    key: &str,
    def: &Map<String, Value>,
    path: &Path,
    set_metadata: &Metadata,
    limits: &Limits,
    compiler: &mut Compiler<'_>,
    diags: &mut Diagnostics,
) -> Option<Flag> {
    let state = match def.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => Some(FlagState::Enabled),
        Some(Value::String(s)) if s == "DISABLED" => Some(FlagState::Disabled),
        Some(other) => {
            diags.error(
                &path.key("state"),
                format!("must be \"ENABLED\" or \"DISABLED\", found {other}"),
            );
            None
        }
        None => {
            diags.error(path, "missing \"state\" (\"ENABLED\" or \"DISABLED\")");
            None
        }
    };
    let variants = variants(def.get("variants"), path, limits, diags);
    let default_variant = match (def.get("defaultVariant"), &variants) {
        (None | Some(Value::Null), _) => Some(None),
        (Some(Value::String(name)), Some((list, _))) => {
            match list.iter().position(|v| &*v.name == name.as_str()) {
                Some(i) => Some(Some(i)),
                None => {
                    diags.error(
                        &path.key("defaultVariant"),
                        format!("names variant {name:?}, which is not among the flag's variants"),
                    );
                    None
                }
            }
        }
        (Some(Value::String(_)), None) => None,
        (Some(other), _) => {
            diags.error(
                &path.key("defaultVariant"),
                format!("must be a variant name or null, found {other}"),
            );
            None
        }
    };
    let targeting = match def.get("targeting") {
        None | Some(Value::Null) => None,
        // flagd treats an empty targeting object as no targeting at all.
        Some(Value::Object(map)) if map.is_empty() => None,
        Some(rule) => Some(compiler.compile(rule, &path.key("targeting"), diags)),
    };
    let own_metadata = metadata(def.get("metadata"), &path.key("metadata"), diags);
    let (variants, kind) = variants?;
    Some(Flag {
        key: key.into(),
        state: state?,
        kind,
        variants,
        default_variant: default_variant?,
        iterates: targeting
            .as_ref()
            .is_some_and(crate::targeting::Expr::iterates),
        reads_clock: targeting
            .as_ref()
            .is_some_and(crate::targeting::Expr::reads_clock),
        buckets_by_targeting_key: targeting
            .as_ref()
            .is_some_and(crate::targeting::Expr::buckets_by_targeting_key),
        targeting,
        metadata: overlay(set_metadata, &own_metadata),
    })
}

fn variants(
    raw: Option<&Value>,
    path: &Path,
    limits: &Limits,
    diags: &mut Diagnostics,
) -> Option<(Box<[Variant]>, VariantKind)> {
    let vpath = path.key("variants");
    let map = match raw {
        Some(Value::Object(map)) if map.len() > limits.max_variants => {
            diags.error(
                &vpath,
                format!(
                    "{} variants, over the limit of {} per flag (max_variants)",
                    map.len(),
                    limits.max_variants
                ),
            );
            return None;
        }
        Some(Value::Object(map)) if !map.is_empty() => map,
        Some(Value::Object(_)) => {
            diags.error(&vpath, "a flag needs at least one variant");
            return None;
        }
        Some(other) => {
            diags.error(
                &vpath,
                format!(
                    "must be a map of variant name to value, found {}",
                    kind_of(other)
                ),
            );
            return None;
        }
        None => {
            diags.error(path, "missing \"variants\"");
            return None;
        }
    };
    let mut kind: Option<(VariantKind, &str)> = None;
    let mut ok = true;
    let mut list = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name.len() > limits.max_variant_name_bytes {
            // Reported at the variants' path: a path with the name in it would echo it whole.
            diags.error(
                &vpath,
                format!(
                    "variant name {:?} is {} bytes, over the limit of {} bytes (max_variant_name_bytes)",
                    shown(name),
                    name.len(),
                    limits.max_variant_name_bytes
                ),
            );
            ok = false;
            continue;
        }
        match (VariantKind::of(value), kind) {
            (None, _) => {
                diags.error(
                    &vpath.key(name),
                    format!(
                        "a variant is a boolean, string, number or object, found {}",
                        kind_of(value)
                    ),
                );
                ok = false;
            }
            (Some(k), None) => kind = Some((k, name)),
            (Some(k), Some((first, first_name))) if k != first => {
                diags.error(
                    &vpath.key(name),
                    format!(
                        "is {} {k}, but variant {first_name:?} is {} {first}: all variants of a flag share one type",
                        article(k),
                        article(first)
                    ),
                );
                ok = false;
            }
            (Some(_), Some(_)) => {}
        }
        list.push(Variant {
            name: name.as_str().into(),
            value: value.clone(),
        });
    }
    match kind {
        Some((kind, _)) if ok => Some((list.into(), kind)),
        _ => None,
    }
}

fn article(kind: VariantKind) -> &'static str {
    match kind {
        VariantKind::Object => "an",
        _ => "a",
    }
}

/// Metadata values are strings, numbers or booleans. Anything else is reported and left out: it is
/// descriptive data, not worth refusing to serve a flag over.
fn metadata(raw: Option<&Value>, path: &Path, diags: &mut Diagnostics) -> Metadata {
    let mut out = Metadata::new();
    match raw {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                if matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                    out.insert(k.clone(), v.clone());
                } else {
                    diags.warning(
                        &path.key(k),
                        format!(
                            "metadata values are strings, numbers or booleans, found {}; left out",
                            kind_of(v)
                        ),
                    );
                }
            }
        }
        Some(other) => diags.warning(
            path,
            format!("metadata is a map, found {}; left out", kind_of(other)),
        ),
    }
    out
}

fn overlay(base: &Metadata, own: &Map<String, Value>) -> Metadata {
    let mut merged = base.clone();
    for (k, v) in own {
        if matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            merged.insert(k.clone(), v.clone());
        }
    }
    merged
}
