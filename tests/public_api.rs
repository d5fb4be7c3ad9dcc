//! The public API is pinned in `public-api.txt`: one line per item a user of the
//! crate can name (modules, re-exports, types with their derives and public fields,
//! functions and methods with their signatures, trait impls of public types).
//! A change to it fails this test until the baseline is regenerated on purpose:
//!
//! ```text
//! UPDATE_PUBLIC_API=1 cargo test --test public_api
//! ```
//!
//! The listing reads the sources with `syn`. Each item is listed under the path a
//! user types (`datafusion_vector_index: … pub enum CommitMode`), found by following
//! the `pub use` re-exports up from the private module that declares it; methods,
//! fields and trait impls go with their type. It trusts `#![warn(unreachable_pub)]`
//! (an error under `cargo clippy -- -D warnings`) that every `pub` item is reachable
//! from the crate root. It leaves
//! out what a default build does not compile (`#[cfg(test)]`, `#[cfg(feature)]`
//! but for the `codec` feature, whose `VectorIndexCodec` is API),
//! `#[doc(hidden)]` items, and code that opts out of that lint for the `internals`
//! feature.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use quote::ToTokens;
use syn::{Attribute, Fields, ImplItem, Item, TraitItem, Visibility};

const BASELINE: &str = "public-api.txt";

#[test]
fn the_public_api_is_the_committed_baseline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = public_api(root);
    let text: String = listed.iter().map(|l| format!("{l}\n")).collect();
    let baseline_path = root.join(BASELINE);
    if std::env::var_os("UPDATE_PUBLIC_API").is_some() {
        std::fs::write(&baseline_path, &text).unwrap();
        return;
    }
    let baseline = std::fs::read_to_string(&baseline_path).unwrap_or_default();
    let pinned: BTreeSet<String> = baseline.lines().map(str::to_string).collect();
    let added: Vec<_> = listed.difference(&pinned).collect();
    let removed: Vec<_> = pinned.difference(&listed).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public API differs from {BASELINE}\n\
         added:\n  {}\nremoved:\n  {}\n\
         If the change is intended: UPDATE_PUBLIC_API=1 cargo test --test public_api",
        join(&added),
        join(&removed),
    );
}

/// The listing itself: what it must show and what it must not.
#[test]
fn the_listing_shows_public_items_and_hides_crate_private_ones() {
    let listed = public_api(Path::new(env!("CARGO_MANIFEST_DIR")));
    let text: Vec<&str> = listed.iter().map(String::as_str).collect();
    let has = |needle: &str| text.iter().any(|l| l.contains(needle));
    for shown in [
        "datafusion_vector_index: #[derive(Debug, Clone)] pub struct VectorIndex",
        "datafusion_vector_index: #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)] #[non_exhaustive] pub enum CommitMode",
        "datafusion_vector_index::format: ",
        "pub fn VectorIndex::open(",
        "pub struct FinalizeOptions",
        "FinalizeOptions::skip_incomplete: bool",
        "pub enum Metric",
        "Display for Metric",
        "pub fn Metric::distance(self, a: &[f32], b: &[f32]) -> f32",
        "pub mod datafusion_vector_index::format",
    ] {
        assert!(has(shown), "missing {shown}");
    }
    for hidden in [
        "::catalog",
        "pub use ",
        "VectorIndexMergeExec",
        "plan_segments",
        "build_graph",
        "Encoder",
        "internals",
        "distance_with",
        "fn Model::codec",
    ] {
        assert!(!has(hidden), "crate-private {hidden} listed");
    }
}

fn join(lines: &[&String]) -> String {
    if lines.is_empty() {
        "(none)".to_string()
    } else {
        lines
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    }
}

const ROOT: &str = "datafusion_vector_index";

fn public_api(root: &Path) -> BTreeSet<String> {
    let mut lister = Lister::default();
    lister.file(&root.join("src/lib.rs"), ROOT);
    let mut entries = std::mem::take(&mut lister.entries);
    for (module, self_ty, trait_name, line) in std::mem::take(&mut lister.trait_impls) {
        // Impls of a crate-private trait are not visible outside.
        let private_trait =
            lister.all_traits.contains(&trait_name) && !lister.types.contains(&trait_name);
        if lister.types.contains(&self_ty) && !private_trait {
            entries.push((module, Some(self_ty), line));
        }
    }
    entries
        .into_iter()
        .map(|(module, subject, text)| match subject {
            Some(name) => format!("{}: {text}", lister.public_module(&module, &name)),
            None => text,
        })
        .collect()
}

#[derive(Default)]
struct Lister {
    /// (declaring module, the item whose public path places the line, text); no
    /// subject for lines that name their own path (`pub mod`).
    entries: Vec<(String, Option<String>, String)>,
    /// `pub use` re-exports: the path they create → the path they name.
    aliases: std::collections::BTreeMap<String, String>,
    /// Private `use`s, likewise: they place an `impl` written beside one.
    imports: std::collections::BTreeMap<String, String>,
    /// Public modules, by path.
    pub_modules: BTreeSet<String>,
    /// Names of public structs, enums and traits.
    types: BTreeSet<String>,
    /// Names of every trait the crate declares, public or not.
    all_traits: BTreeSet<String>,
    /// Trait impls as (module, self type name, trait name, line), kept when the type
    /// is public and the trait is not a crate-private one.
    trait_impls: Vec<(String, String, String, String)>,
}

impl Lister {
    fn add(&mut self, module: &str, subject: &str, text: String) {
        self.entries
            .push((module.to_string(), Some(subject.to_string()), text));
    }

    /// Where users name `name`, declared in `module`: the shortest path that reaches
    /// it through public modules and re-exports, minus the name.
    fn public_module(&self, module: &str, name: &str) -> String {
        let declared = format!("{module}::{name}");
        let resolve = |path: &str| {
            let mut path = path.to_string();
            for _ in 0..32 {
                match self.aliases.get(&path).or_else(|| self.imports.get(&path)) {
                    Some(next) => path = next.clone(),
                    None => break,
                }
            }
            path
        };
        let reachable = |path: &str| {
            let parts: Vec<&str> = path.split("::").collect();
            (2..parts.len()).all(|n| self.pub_modules.contains(&parts[..n].join("::")))
        };
        // A type's `impl` may sit in another module than the type (a `use` there).
        let declared = resolve(&declared);
        let mut paths: Vec<&String> = self
            .aliases
            .keys()
            .filter(|alias| reachable(alias) && resolve(alias) == declared)
            .collect();
        if reachable(&declared) {
            paths.push(&declared);
        }
        paths
            .into_iter()
            .min_by_key(|p| (p.matches("::").count(), p.len()))
            .map_or(module.to_string(), |p| {
                p.rsplit_once("::")
                    .map_or(p.clone(), |(m, _)| m.to_string())
            })
    }

    /// Records the paths `tree`, a `use` in `module`, creates (`public`: a re-export).
    fn uses(&mut self, module: &str, public: bool, prefix: Vec<String>, tree: &syn::UseTree) {
        let mut joined = |mut prefix: Vec<String>, name: &str, alias: &str| {
            let target = match prefix.first().map(String::as_str) {
                Some("crate") => {
                    prefix[0] = ROOT.to_string();
                    prefix
                }
                Some("self") => {
                    prefix[0] = module.to_string();
                    prefix
                }
                Some("super") => {
                    let parent = module.rsplit_once("::").map_or(ROOT, |(p, _)| p);
                    prefix[0] = parent.to_string();
                    prefix
                }
                _ => std::iter::once(module.to_string()).chain(prefix).collect(),
            };
            let map = if public {
                &mut self.aliases
            } else {
                &mut self.imports
            };
            map.insert(
                format!("{module}::{alias}"),
                format!("{}::{name}", target.join("::")),
            );
        };
        match tree {
            syn::UseTree::Path(p) => {
                let mut prefix = prefix;
                prefix.push(p.ident.to_string());
                self.uses(module, public, prefix, &p.tree);
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                joined(prefix, &name, &name);
            }
            syn::UseTree::Rename(r) => {
                joined(prefix, &r.ident.to_string(), &r.rename.to_string());
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.uses(module, public, prefix.clone(), t);
                }
            }
            syn::UseTree::Glob(_) => {}
        }
    }

    fn file(&mut self, path: &Path, module: &str) {
        let source = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let file =
            syn::parse_file(&source).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        if file.attrs.iter().any(opts_out) {
            return;
        }
        let dir = module_dir(path);
        self.items(&file.items, module, &dir);
    }

    fn items(&mut self, items: &[Item], module: &str, dir: &Path) {
        for item in items {
            if item_attrs(item)
                .iter()
                .any(|a| compiled_out(a) || opts_out(a))
            {
                continue;
            }
            self.item(item, module, dir);
        }
    }

    fn item(&mut self, item: &Item, module: &str, dir: &Path) {
        if let Item::Trait(t) = item {
            self.all_traits.insert(t.ident.to_string());
        }
        match item {
            Item::Mod(m) => {
                let name = m.ident.to_string();
                let child = format!("{module}::{name}");
                if is_pub(&m.vis) {
                    self.pub_modules.insert(child.clone());
                    self.entries
                        .push((module.to_string(), None, format!("pub mod {child}")));
                }
                match &m.content {
                    Some((_, items)) => self.items(items, &child, &dir.join(&name)),
                    None => {
                        let flat = dir.join(format!("{name}.rs"));
                        let path = if flat.exists() {
                            flat
                        } else {
                            dir.join(&name).join("mod.rs")
                        };
                        self.file(&path, &child);
                    }
                }
            }
            Item::Use(u) => self.uses(module, is_pub(&u.vis), Vec::new(), &u.tree),
            Item::Fn(f) if is_pub(&f.vis) => {
                let name = f.sig.ident.to_string();
                let text = format!("pub {}", signature(&f.sig, &name));
                self.add(module, &name, text);
            }
            Item::Const(c) if is_pub(&c.vis) => {
                let text = format!("pub const {}: {}", c.ident, tidy(&c.ty));
                self.add(module, &c.ident.to_string(), text);
            }
            Item::Static(s) if is_pub(&s.vis) => {
                let text = format!("pub static {}: {}", s.ident, tidy(&s.ty));
                self.add(module, &s.ident.to_string(), text);
            }
            Item::Type(t) if is_pub(&t.vis) => {
                let text = format!(
                    "pub type {}{} = {}",
                    t.ident,
                    tidy(&t.generics),
                    tidy(&t.ty)
                );
                self.add(module, &t.ident.to_string(), text);
            }
            Item::Struct(s) if is_pub(&s.vis) => {
                let name = s.ident.to_string();
                self.types.insert(name.clone());
                let text = format!(
                    "{}pub struct {name}{}",
                    attributes(&s.attrs),
                    tidy(&s.generics)
                );
                self.add(module, &name, text);
                self.fields(module, &name, &s.fields);
            }
            Item::Enum(e) if is_pub(&e.vis) => {
                let name = e.ident.to_string();
                self.types.insert(name.clone());
                let text = format!(
                    "{}pub enum {name}{}",
                    attributes(&e.attrs),
                    tidy(&e.generics)
                );
                self.add(module, &name, text);
                for v in &e.variants {
                    let fields = match &v.fields {
                        Fields::Unit => String::new(),
                        fields => tidy(fields),
                    };
                    self.add(module, &name, format!("{name}::{}{fields}", v.ident));
                }
            }
            Item::Trait(t) if is_pub(&t.vis) => {
                let name = t.ident.to_string();
                self.types.insert(name.clone());
                let text = format!("pub trait {name}{}", tidy(&t.generics));
                self.add(module, &name, text);
                for item in &t.items {
                    if let TraitItem::Fn(f) = item {
                        let method = format!("{name}::{}", f.sig.ident);
                        self.add(module, &name, signature(&f.sig, &method));
                    }
                }
            }
            Item::Impl(i) => self.impl_block(i, module),
            _ => {}
        }
    }

    fn fields(&mut self, module: &str, owner: &str, fields: &Fields) {
        for (n, field) in fields.iter().enumerate() {
            if !is_pub(&field.vis) {
                continue;
            }
            let name = field
                .ident
                .as_ref()
                .map_or_else(|| n.to_string(), ToString::to_string);
            let text = format!("pub {owner}::{name}: {}", tidy(&field.ty));
            self.add(module, owner, text);
        }
    }

    fn impl_block(&mut self, block: &syn::ItemImpl, module: &str) {
        let self_ty = type_name(&block.self_ty);
        match &block.trait_ {
            Some((_, path, _)) => {
                let line = format!(
                    "impl{} {} for {}",
                    tidy(&block.generics),
                    tidy(path),
                    tidy(&block.self_ty)
                );
                let trait_name = path
                    .segments
                    .last()
                    .map_or_else(String::new, |s| s.ident.to_string());
                self.trait_impls
                    .push((module.to_string(), self_ty, trait_name, line));
            }
            None => {
                for item in &block.items {
                    match item {
                        ImplItem::Fn(f)
                            if is_pub(&f.vis)
                                && !f.attrs.iter().any(|a| compiled_out(a) || opts_out(a)) =>
                        {
                            let method = format!("{self_ty}::{}", f.sig.ident);
                            let text = format!("pub {}", signature(&f.sig, &method));
                            self.add(module, &self_ty, text);
                        }
                        ImplItem::Const(c) if is_pub(&c.vis) => {
                            let text = format!("pub const {self_ty}::{}: {}", c.ident, tidy(&c.ty));
                            self.add(module, &self_ty, text);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The folder that a file's `mod x;` declarations live in.
fn module_dir(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap().to_path_buf();
    match path.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs") | Some("mod.rs") => parent,
        _ => parent.join(path.file_stem().unwrap()),
    }
}

fn is_pub(vis: &Visibility) -> bool {
    matches!(vis, Visibility::Public(_))
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Features whose items are API like the rest (documented, pinned here).
const API_FEATURES: &[&str] = &["codec", "cli"];

/// Not compiled by default (`#[cfg(test)]`, `#[cfg(feature = …)]` but for
/// [`API_FEATURES`]) or hidden from docs.
fn compiled_out(attr: &Attribute) -> bool {
    let tokens = attr.meta.to_token_stream().to_string();
    let compact: String = tokens.split_whitespace().collect();
    let api_feature = API_FEATURES
        .iter()
        .any(|f| compact == format!("cfg(feature=\"{f}\")"));
    (attr.path().is_ident("cfg")
        && (compact.starts_with("cfg(test")
            || (compact.starts_with("cfg(feature") && !api_feature)))
        || (attr.path().is_ident("doc") && compact == "doc(hidden)")
}

/// Code that opts out of `unreachable_pub` (what the `internals` feature shows).
fn opts_out(attr: &Attribute) -> bool {
    let tokens = attr.meta.to_token_stream().to_string();
    tokens.contains("allow") && tokens.contains("unreachable_pub")
}

/// The attributes that are API: derives, and `#[non_exhaustive]`.
fn attributes(attrs: &[Attribute]) -> String {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive") || a.path().is_ident("non_exhaustive"))
        .map(|a| format!("#[{}] ", tidy(&a.meta)))
        .collect()
}

fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map_or_else(String::new, |s| s.ident.to_string()),
        other => tidy(other),
    }
}

fn signature(sig: &syn::Signature, name: &str) -> String {
    let mut out = String::new();
    if sig.constness.is_some() {
        out.push_str("const ");
    }
    if sig.asyncness.is_some() {
        out.push_str("async ");
    }
    if sig.unsafety.is_some() {
        out.push_str("unsafe ");
    }
    let inputs: Vec<String> = sig.inputs.iter().map(tidy).collect();
    out.push_str(&format!(
        "fn {name}{}({}){}",
        tidy(&sig.generics),
        inputs.join(", "),
        tidy(&sig.output)
    ));
    if let Some(w) = &sig.generics.where_clause {
        out.push(' ');
        out.push_str(&tidy(w));
    }
    out
}

/// Tokens as a Rust programmer writes them (`&[f32]`, not `& [f32]`).
fn tidy(node: &impl ToTokens) -> String {
    let mut s = node.to_token_stream().to_string();
    for (from, to) in [
        (" ,", ","),
        (" ;", ";"),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" < ", "<"),
        ("< ", "<"),
        (" <", "<"),
        (" >", ">"),
        (":: ", "::"),
        (" ::", "::"),
        (" :", ":"),
        ("& ", "&"),
        ("# [", "#["),
        ("! [", "!["),
        ("' ", "'"),
        ("{ ", "{"),
        (" }", "}"),
        (" (", "("),
        (" .", "."),
    ] {
        while s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s.replace("->", " -> ")
        .replace("  ", " ")
        .replace("= >", "=>")
}
