//! Rewrites a checked method: the connection parameter goes, and the body
//! runs unchanged inside an `async move` closure handed to the routing.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::attr::{Args, Kind};
use crate::lint;
use crate::model::{self, Output};

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
    let conn = &method.conn;
    let conn_ty = &method.conn_ty;
    let declared = &method.declared;
    let body = &item.block;
    let own = matches!(method.output, Output::Own(_));
    let tenant = match &method.tenant {
        Some(tenant) => quote!(::core::option::Option::Some(#tenant)),
        None => quote!(::core::option::Option::None),
    };
    let output = match &method.output {
        Output::Diesel(ok) => {
            quote!(::core::result::Result<#ok, ::diesel_replica::__private::Error>)
        }
        Output::Own(ty) => quote!(#ty),
    };
    let call = match (kind, args.primary.is_some()) {
        // A read may run again on another replica when its node fails, so
        // its closure borrows the arguments (and is cloned per attempt)
        // instead of taking them.
        (Kind::ReadOnly, false) => {
            let runner = if own {
                quote!(read)
            } else {
                quote!(read_query)
            };
            quote!(::diesel_replica::__private::#runner(
                self,
                #tenant,
                async |#conn: #conn_ty| -> #declared #body,
            ))
        }
        (kind, _) => {
            let runner = if own { quote!(run) } else { quote!(run_query) };
            let route = if kind == Kind::ReadOnly {
                quote!(ReadFresh)
            } else {
                quote!(Transaction)
            };
            quote!(::diesel_replica::__private::#runner(
                self,
                ::diesel_replica::__private::Route::#route,
                #tenant,
                async move |#conn: #conn_ty| -> #declared #body,
            ))
        }
    };
    let new_body = quote!({ #call.await });
    item.sig.inputs = item
        .sig
        .inputs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, a)| a)
        .collect();
    item.sig.output = syn::parse2(quote!(-> #output))?;
    item.block = syn::parse2(new_body)?;
    Ok(quote!(#item))
}
