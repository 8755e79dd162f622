//! A `#[read_only]` or `#[write]` method, checked: an `async fn` with a
//! `&self` receiver, then the connection parameter, then the rest.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::visit_mut::{self, VisitMut};
use syn::{
    Attribute, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type, TypePath,
};

use crate::attr::Kind;

/// What the method returns, which decides the generated method's error type.
pub(crate) enum Output {
    /// diesel's `QueryResult<T>` (or `Result<T, diesel::result::Error>`):
    /// the generated method returns `Result<T, diesel_replica::Error>`.
    Diesel(Type),
    /// Any other type, returned as it is; its error type implements
    /// `From<diesel_replica::Error>`.
    Own(Type),
}

/// The parts of a checked method that expansion needs.
pub(crate) struct Method {
    /// The pattern the connection is bound to (`conn`).
    pub(crate) conn: Pat,
    /// Its type as written (`&mut AsyncPgConnection`), so that the user's
    /// import stays in use.
    pub(crate) conn_ty: Type,
    /// The declared return type.
    pub(crate) declared: Type,
    /// The parameters after the connection, each of which the generated
    /// code classifies by type: the one of type `&Tenant` scopes the method.
    pub(crate) params: Vec<Param>,
    /// The parameters' types that name a generic type parameter of the
    /// method (`T`, `T::Item`), each of which gets a `PlainParam` bound.
    pub(crate) bounded: Vec<Type>,
    pub(crate) output: Output,
}

/// A parameter after the connection.
pub(crate) struct Param {
    pub(crate) attrs: Vec<Attribute>,
    /// The name it is bound to in the generated method: the user's, or a
    /// generated one for a pattern (`(a, b)`, `_`).
    pub(crate) name: syn::Ident,
    pub(crate) ty: Type,
    /// The user's pattern, bound from `name` at the start of the body.
    pub(crate) destructure: Option<Pat>,
}

pub(crate) fn check(kind: Kind, item: &ItemFn) -> syn::Result<Method> {
    let attr = kind.name();
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            format!(
                "`#[{attr}]` needs an `async fn`: it runs the body on a pooled connection\n\n\
                 help: write `async fn {}(..)`",
                sig.ident
            ),
        ));
    }
    for other in &item.attrs {
        let name = other.path().segments.last().map(|s| s.ident.to_string());
        if matches!(name.as_deref(), Some("read_only" | "write")) {
            return Err(syn::Error::new_spanned(
                other,
                "a method is either `#[read_only]` or `#[write]`, not both\n\n\
                 help: keep `#[read_only]` for a read on a replica, `#[write]` for the writer",
            ));
        }
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(FnArg::Receiver(receiver)) => {
            return Err(syn::Error::new_spanned(
                receiver,
                format!("`#[{attr}]` methods take `&self`\n\nhelp: write `&self`"),
            ));
        }
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!(
                    "`#[{attr}]` routes a method of a repo, and `{}` has no `&self` receiver\n\n\
                     help: move it into `impl YourRepo {{ .. }}` of a type that derives `ReplicatedRepo`, \
                     and take `&self` first",
                    sig.ident
                ),
            ));
        }
    }
    let (conn, conn_ty) = connection(attr, sig, inputs.next())?;
    let (params, bounded) = params(attr, &sig.generics, inputs)?;
    let ReturnType::Type(_, declared) = &sig.output else {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            format!(
                "`#[{attr}]` methods return a `Result`, since routing can fail\n\n\
                 help: return `QueryResult<T>`, or `Result<T, E>` where `E: From<diesel_replica::Error>`"
            ),
        ));
    };
    let declared = (**declared).clone();
    let output = match diesel_result(&declared) {
        Some(ok) => Output::Diesel(ok),
        None => Output::Own(declared.clone()),
    };
    Ok(Method {
        conn,
        conn_ty,
        declared,
        params,
        bounded,
        output,
    })
}

/// The connection parameter, right after `&self`.
fn connection(attr: &str, sig: &syn::Signature, arg: Option<&FnArg>) -> syn::Result<(Pat, Type)> {
    let help = "help: take the connection right after `&self`: `conn: &mut AsyncPgConnection`";
    let missing = |span: Span| {
        syn::Error::new(
            span,
            format!(
                "`#[{attr}]` methods take the connection as their first parameter after `&self`; \
                 the macro supplies it, and callers leave it out\n\n{help}"
            ),
        )
    };
    let Some(FnArg::Typed(arg)) = arg else {
        return Err(missing(sig.paren_token.span.join()));
    };
    let looks_like_connection = names_connection(&arg.ty)
        || matches!(&*arg.pat, Pat::Ident(p) if p.ident.to_string().contains("conn"));
    if !looks_like_connection {
        return Err(missing(arg.span()));
    }
    match &*arg.ty {
        Type::Reference(r) if r.mutability.is_some() && is_async_pg_connection(&r.elem) => {}
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!(
                    "the connection parameter must be `&mut AsyncPgConnection`, diesel-async's \
                     connection, which the replica pools hand out\n\n{help}"
                ),
            ));
        }
    }
    match &*arg.pat {
        Pat::Ident(_) | Pat::Wild(_) => Ok(((*arg.pat).clone(), (*arg.ty).clone())),
        other => Err(syn::Error::new_spanned(
            other,
            format!("bind the connection to a name\n\n{help}"),
        )),
    }
}

/// The parameters after the connection. Whether one scopes the method is
/// decided by its type, in the generated code; here each is checked to
/// have a type that decision can see, and bound to a name it can use. A
/// type the method cannot see (a generic, `impl Trait`) gets the bound
/// `PlainParam`, which no type holding a tenant or a session satisfies.
fn params<'a>(
    attr: &str,
    generics: &syn::Generics,
    inputs: impl Iterator<Item = &'a FnArg>,
) -> syn::Result<(Vec<Param>, Vec<Type>)> {
    let generics: Vec<&syn::Ident> = generics.type_params().map(|p| &p.ident).collect();
    let mut params = Vec::new();
    let mut unseen = Unseen {
        attr,
        generics: &generics,
        bounded: Vec::new(),
        error: None,
    };
    for (i, arg) in inputs.enumerate() {
        let FnArg::Typed(arg) = arg else { continue };
        unseen.visit_type(&arg.ty);
        let mut ty = (*arg.ty).clone();
        PlainImpl.visit_type_mut(&mut ty);
        let (name, destructure) = match &*arg.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => (p.ident.clone(), None),
            other => (
                // Mixed-site: the name cannot clash with the user's.
                syn::Ident::new(&format!("__arg{}", i + 2), Span::mixed_site()),
                Some(other.clone()),
            ),
        };
        params.push(Param {
            attrs: arg.attrs.clone(),
            name,
            ty,
            destructure,
        });
    }
    match unseen.error {
        Some(error) => Err(error),
        None => Ok((params, unseen.bounded)),
    }
}

/// Finds the types the generated code cannot classify: each type that
/// names a generic type parameter of the method (`T`, `T::Item`) is kept
/// for a `PlainParam` bound, and a trait object, which no bound can reach,
/// is refused.
struct Unseen<'a> {
    attr: &'a str,
    generics: &'a [&'a syn::Ident],
    bounded: Vec<Type>,
    error: Option<syn::Error>,
}

impl Unseen<'_> {
    fn names_generic(&self, ty: &TypePath) -> bool {
        let mut found = false;
        let mut finder = NamesGeneric {
            generics: self.generics,
            found: &mut found,
        };
        finder.visit_type_path(ty);
        found
    }
}

impl<'ast> Visit<'ast> for Unseen<'_> {
    fn visit_type_trait_object(&mut self, ty: &'ast syn::TypeTraitObject) {
        let attr = self.attr;
        let error = syn::Error::new_spanned(
            ty,
            format!(
                "`#[{attr}]` cannot tell whether a trait object holds a tenant: one passed here \
                 would leave the method unscoped, on the shared schemas\n\n\
                 help: take `impl Trait` or a generic instead, which the macro bounds by \
                 `diesel_replica::PlainParam`, or a concrete type; a tenant is taken as \
                 `tenant: &Tenant`"
            ),
        );
        match &mut self.error {
            Some(first) => first.combine(error),
            None => self.error = Some(error),
        }
    }

    fn visit_type_path(&mut self, ty: &'ast TypePath) {
        let generic_root = ty.qself.is_some()
            || ty
                .path
                .segments
                .first()
                .is_some_and(|first| self.generics.contains(&&first.ident));
        if generic_root && self.names_generic(ty) {
            // `T`, `T::Item`, `<T as Trait>::Out`: bounded as written.
            let ty = Type::Path(ty.clone());
            let written = |ty: &Type| quote::ToTokens::to_token_stream(ty).to_string();
            if !self.bounded.iter().any(|b| written(b) == written(&ty)) {
                self.bounded.push(ty);
            }
        } else {
            visit::visit_type_path(self, ty);
        }
    }
}

/// Whether a type path names one of the method's generic type parameters.
struct NamesGeneric<'a, 'f> {
    generics: &'a [&'a syn::Ident],
    found: &'f mut bool,
}

impl<'ast> Visit<'ast> for NamesGeneric<'_, '_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first()
            && self.generics.contains(&&first.ident)
        {
            *self.found = true;
        }
        visit::visit_path(self, path);
    }
}

/// Adds `+ PlainParam` to each `impl Trait` of a parameter's type.
struct PlainImpl;

impl VisitMut for PlainImpl {
    fn visit_type_impl_trait_mut(&mut self, ty: &mut syn::TypeImplTrait) {
        visit_mut::visit_type_impl_trait_mut(self, ty);
        let span = Span::mixed_site().located_at(ty.span());
        ty.bounds
            .push(syn::parse_quote_spanned!(span=> ::diesel_replica::PlainParam));
    }
}

fn last_ident(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(TypePath { path, .. }) => path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn is_async_pg_connection(ty: &Type) -> bool {
    last_ident(ty).as_deref() == Some("AsyncPgConnection")
}

/// Whether a type names a connection of some kind, to tell a connection of
/// the wrong type from a missing one.
fn names_connection(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => names_connection(&r.elem),
        other => last_ident(other).is_some_and(|name| name.contains("Connection")),
    }
}

/// `T` when `ty` is diesel's `QueryResult<T>` or `Result<T, ..result::Error>`.
fn diesel_result(ty: &Type) -> Option<Type> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match (last.ident.to_string().as_str(), types.as_slice()) {
        ("QueryResult", [ok]) => Some((*ok).clone()),
        ("Result", [ok, Type::Path(err)]) => {
            let names: Vec<String> = err
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            names
                .ends_with(&["result".to_owned(), "Error".to_owned()])
                .then(|| (*ok).clone())
        }
        _ => None,
    }
}
