//! Rewrites a checked method: the connection parameter goes, and the body
//! runs unchanged inside an `async move` closure handed to the routing.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Token};

use crate::attr::{Args, Kind};
use crate::lint;
use crate::model::{self, Output, Param};

/// Expands `#[read_only]` or `#[write]`; on error, the error and the item as
/// it was, so one mistake does not cascade.
pub(crate) fn method(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let parsed: ItemFn = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(error) => return with_item(error, item),
    };
    method_inner(kind, args, parsed).unwrap_or_else(|error| with_item(error, item))
}

fn with_item(error: syn::Error, item: TokenStream) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#error #item)
}

fn method_inner(kind: Kind, args: TokenStream, mut item: ItemFn) -> syn::Result<TokenStream> {
    let args = Args::parse(kind, args)?;
    let method = model::check(kind, &item)?;
    if kind == Kind::ReadOnly {
        lint::writes_in(&item.block)?;
    }
    let p = quote!(::diesel_replica::__private);
    let conn = &method.conn;
    let conn_ty = &method.conn_ty;
    let declared = &method.declared;
    let body = &item.block;
    // Mixed-site: these names cannot clash with the user's.
    let tenant_var = Ident::new("__tenant", Span::mixed_site());
    let session_var = Ident::new("__session", Span::mixed_site());
    let runner_var = Ident::new("__runner", Span::mixed_site());
    let tenant = tenant(kind, &method.params);
    let session = session(&method.params);
    let operation = item.sig.ident.to_string();
    let destructure = method.params.iter().filter_map(|param| {
        let name = &param.name;
        param
            .destructure
            .as_ref()
            .map(|pat| quote!(let #pat = #name;))
    });
    let output = match &method.output {
        Output::Diesel(ok) => quote!(::core::result::Result<#ok, #p::Error>),
        Output::Own(ty) => quote!(#ty),
    };
    // The runner of a method with its own error type is chosen by that
    // type: one that is diesel's under another name is a compile error
    // that says so, on the declared type.
    let own = matches!(method.output, Output::Own(_)).then(|| {
        let span = Span::mixed_site().located_at(declared.span());
        quote_spanned! {span=>
            let #runner_var = {
                use ::diesel_replica::__private::{DieselErrorKind as _, OwnErrorKind as _};
                (&&::diesel_replica::__private::ErrorProbe::<#declared>::NEW)
                    .runner()
                    .checked()
            };
        }
    });
    let runner = |own_name: &str, diesel_name: &str| match &own {
        Some(_) => {
            let name = Ident::new(own_name, Span::call_site());
            quote!(#runner_var.#name)
        }
        None => {
            let name = Ident::new(diesel_name, Span::call_site());
            quote!(#p::#name)
        }
    };
    let call = match (kind, args.primary.is_some()) {
        // A read may run again on another replica when its node fails, so
        // its closure borrows the arguments (and is cloned per attempt)
        // instead of taking them.
        (Kind::ReadOnly, false) => {
            let runner = runner("read", "read_query");
            let route = if args.snapshot.is_some() {
                quote!(ReadSnapshot)
            } else {
                quote!(Read)
            };
            quote!(#runner(
                self,
                #p::Route::#route,
                #tenant_var,
                #session_var,
                #operation,
                async |#conn: #conn_ty| -> #declared #body,
            ))
        }
        (kind, _) => {
            let runner = runner("run", "run_query");
            let route = if kind == Kind::ReadOnly {
                quote!(ReadFresh)
            } else {
                quote!(Transaction)
            };
            quote!(#runner(
                self,
                #p::Route::#route,
                #tenant_var,
                #session_var,
                #operation,
                async move |#conn: #conn_ty| -> #declared #body,
            ))
        }
    };
    let new_body = quote!({
        let #tenant_var = #tenant;
        let #session_var = #session;
        #(#destructure)*
        #own
        #call.await
    });
    let mut inputs: Punctuated<FnArg, Token![,]> = item.sig.inputs.into_iter().take(1).collect();
    for param in &method.params {
        let Param {
            attrs, name, ty, ..
        } = param;
        inputs.push(syn::parse2(quote!(#(#attrs)* #name: #ty))?);
    }
    item.sig.inputs = inputs;
    // What the method cannot classify must be plain: the bound sits on the
    // parameter's type, where a caller's error points.
    for ty in &method.bounded {
        plain_bound(&mut item.sig.generics, ty);
    }
    item.sig.output = syn::parse2(quote!(-> #output))?;
    item.block = syn::parse2(new_body)?;
    Ok(quote!(#item))
}

/// Bounds `ty` by `PlainParam`: beside the bounds the user wrote for a
/// type parameter (inline or in the `where` clause), so that they stay in
/// one place; in the `where` clause for any other type (`T::Item`).
fn plain_bound(generics: &mut syn::Generics, ty: &syn::Type) {
    let span = Span::mixed_site().located_at(ty.span());
    let bound: syn::TypeParamBound = syn::parse_quote_spanned!(span=> ::diesel_replica::PlainParam);
    let param = match ty {
        syn::Type::Path(path) if path.qself.is_none() => path.path.get_ident(),
        _ => None,
    };
    let bounded_in_where = |generics: &syn::Generics, ident: &Ident| {
        generics.where_clause.iter().flat_map(|w| &w.predicates).any(|p| {
            matches!(p, syn::WherePredicate::Type(t)
                if matches!(&t.bounded_ty, syn::Type::Path(b) if b.qself.is_none() && b.path.is_ident(ident)))
        })
    };
    if let Some(ident) = param
        && !bounded_in_where(generics, ident)
        && let Some(param) = generics.type_params_mut().find(|p| p.ident == *ident)
    {
        if param.colon_token.is_none() {
            param.colon_token = Some(Token![:](span));
        }
        param.bounds.push(bound);
        return;
    }
    generics
        .make_where_clause()
        .predicates
        .push(syn::parse_quote_spanned!(span=> #ty: #bound));
}

/// The tenant that scopes the call, decided by the parameters' types: each
/// is classified (`&Tenant`, a refused form holding a tenant, or anything
/// else) and the results folded, so that two tenants or a refused form are
/// compile errors pointing at the parameter.
fn tenant(kind: Kind, params: &[Param]) -> TokenStream {
    let p = quote!(::diesel_replica::__private);
    if params.is_empty() {
        return quote!(::core::option::Option::None);
    }
    let check = match kind {
        Kind::ReadOnly => "read_only",
        Kind::Write => "write",
    };
    // Every token of a fold is located at the parameter's type, where its
    // errors point.
    let folds = params.iter().map(|Param { name, ty, .. }| {
        let span = Span::mixed_site().located_at(ty.span());
        let so_far = Ident::new("__params", span);
        let check = Ident::new(check, span);
        quote_spanned! {span=>
            let #so_far = ::diesel_replica::__private::WithParam::with_param(
                #so_far,
                (&&&::diesel_replica::__private::Probe(&#name)).tenant_param().#check(),
            );
        }
    });
    let so_far = Ident::new("__params", Span::mixed_site());
    quote!({
        use #p::{HeldTenant as _, OtherParam as _, TenantRef as _};
        let #so_far = #p::NoTenant;
        #(#folds)*
        #so_far.tenant()
    })
}

/// The read-your-writes session of the call, decided by the parameters'
/// types as the tenant is: `&ReadYourWrites` (under any alias) is the
/// session, a form that holds one otherwise is refused, and two are a
/// compile error.
fn session(params: &[Param]) -> TokenStream {
    let p = quote!(::diesel_replica::__private);
    if params.is_empty() {
        return quote!(::core::option::Option::None);
    }
    let folds = params.iter().map(|Param { name, ty, .. }| {
        let span = Span::mixed_site().located_at(ty.span());
        let so_far = Ident::new("__sessions", span);
        quote_spanned! {span=>
            let #so_far = ::diesel_replica::__private::WithSession::with_session(
                #so_far,
                (&&&::diesel_replica::__private::Probe(&#name)).session_param().checked(),
            );
        }
    });
    let so_far = Ident::new("__sessions", Span::mixed_site());
    quote!({
        use #p::{HeldSession as _, OtherSessionParam as _, SessionRef as _};
        let #so_far = #p::NoSession;
        #(#folds)*
        #so_far.session()
    })
}
