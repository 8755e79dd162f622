//! `#[derive(ReplicatedRepo)]`: constructors, access to the replica set, and
//! the `Repo` impl that `#[read_only]` and `#[write]` methods route through.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Member, Type};

pub(crate) fn derive(input: TokenStream) -> syn::Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let name = &input.ident;
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        Data::Enum(data) => return Err(not_a_struct(data.enum_token.span, name)),
        Data::Union(data) => return Err(not_a_struct(data.union_token.span, name)),
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            format!(
                "`ReplicatedRepo` cannot be derived for a generic type\n\n\
                 help: remove the parameters from `{name}`"
            ),
        ));
    }
    let members: Vec<(Member, &Type)> = fields
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let member = field
                .ident
                .clone()
                .map_or_else(|| Member::from(i), Member::from);
            (member, &field.ty)
        })
        .collect();
    let mut sets = members.iter().filter(|(_, ty)| is_replica_set(ty));
    let set = sets.next();
    if let Some((_, second)) = sets.next() {
        return Err(syn::Error::new_spanned(
            second,
            format!(
                "`{name}` has a second `ReplicaSet` field; a repo holds one replica set\n\n\
                 help: keep one `ReplicaSet` field, or split the repo in two"
            ),
        ));
    }
    match set {
        Some((member, _)) => Ok(with_field(name, member, &members)),
        None if members.is_empty() => Ok(unit(name)),
        None => Err(syn::Error::new(
            name.span(),
            format!(
                "`{name}` has no `ReplicaSet` field for its replica set\n\n\
                 help: add a field `replicas: diesel_replica::ReplicaSet`, or derive on a unit struct"
            ),
        )),
    }
}

fn not_a_struct(span: proc_macro2::Span, name: &syn::Ident) -> syn::Error {
    syn::Error::new(
        span,
        format!(
            "`ReplicatedRepo` can only be derived for a struct\n\n\
             help: write `struct {name} {{ replicas: diesel_replica::ReplicaSet }}`, or `struct {name};`"
        ),
    )
}

fn is_replica_set(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "ReplicaSet"))
}

/// The constructors every repo has; `build` turns a connected set into `Self`.
fn constructors(name: &syn::Ident, build: TokenStream) -> TokenStream {
    let p = quote!(::diesel_replica::__private);
    let connect_doc =
        format!("Connects a `{name}` with `config`, opening each node's warm-up connections.");
    quote! {
        /// Connects with the `DATABASE_*` environment variables.
        pub async fn from_env() -> ::core::result::Result<Self, #p::Error> {
            Self::connect(#p::Config::from_env()?).await
        }

        /// Connects with the `{PREFIX}_DATABASE_*` environment variables.
        pub async fn from_env_with_prefix(prefix: &str) -> ::core::result::Result<Self, #p::Error> {
            Self::connect(#p::Config::from_env_with_prefix(prefix)?).await
        }

        #[doc = #connect_doc]
        pub async fn connect(config: #p::Config) -> ::core::result::Result<Self, #p::Error> {
            #build
        }
    }
}

fn with_field(name: &syn::Ident, set: &Member, members: &[(Member, &Type)]) -> TokenStream {
    let p = quote!(::diesel_replica::__private);
    let others = members
        .iter()
        .filter(|(m, _)| m != set)
        .map(|(member, ty)| {
            // A field without `Default` gets its error here, on its own type.
            quote_spanned!(ty.span()=> #member: ::core::default::Default::default())
        });
    let build = quote! {
        ::core::result::Result::Ok(Self {
            #set: #p::ReplicaSet::connect(config).await?,
            #(#others,)*
        })
    };
    let constructors = constructors(name, build);
    quote! {
        impl #p::Repo for #name {
            fn replica_set(&self) -> ::core::result::Result<&#p::ReplicaSet, #p::Error> {
                ::core::result::Result::Ok(&self.#set)
            }
        }

        impl #name {
            #constructors

            /// The replica set, for the explicit API (`read`, `write`, `status`, ..).
            pub fn replica_set(&self) -> &#p::ReplicaSet {
                &self.#set
            }
        }
    }
}

/// A repo without fields keeps its set in a static: one per type and process.
fn unit(name: &syn::Ident) -> TokenStream {
    let p = quote!(::diesel_replica::__private);
    let repo = name.to_string();
    let build = quote! {
        if SET.get().is_some() {
            return ::core::result::Result::Err(#p::Error::AlreadyConnected { repo: #repo });
        }
        #p::set_unit_set(&SET, #repo, #p::ReplicaSet::connect(config).await?)?;
        ::core::result::Result::Ok(Self {})
    };
    let constructors = constructors(name, build);
    quote! {
        const _: () = {
            static SET: #p::OnceLock<#p::ReplicaSet> = #p::OnceLock::new();

            impl #p::Repo for #name {
                fn replica_set(&self) -> ::core::result::Result<&#p::ReplicaSet, #p::Error> {
                    #p::unit_set(&SET, #repo)
                }
            }

            impl #name {
                #constructors

                /// The replica set, for the explicit API (`read`, `write`, `status`, ..);
                /// an error before the repo is connected.
                pub fn replica_set(&self) -> ::core::result::Result<&'static #p::ReplicaSet, #p::Error> {
                    #p::unit_set(&SET, #repo)
                }
            }
        };
    }
}
