//! Expansion snapshots of representative inputs.

use proc_macro2::TokenStream;
use quote::quote;

use crate::attr::Kind;

fn pretty(tokens: TokenStream) -> String {
    prettyplease::unparse(&syn::parse2(tokens).expect("expansion parses as a file"))
}

fn method(kind: Kind, args: TokenStream, item: TokenStream) -> String {
    pretty(crate::expand::method(kind, args, item))
}

#[test]
fn read_only_returning_query_result() {
    insta::assert_snapshot!(method(
        Kind::ReadOnly,
        quote!(),
        quote! {
            /// A user by id.
            pub async fn user(&self, conn: &mut AsyncPgConnection, id: i64) -> QueryResult<User> {
                if id < 0 {
                    return Err(diesel::result::Error::NotFound);
                }
                users::table.find(id).first(conn).await
            }
        },
    ));
}

#[test]
fn read_only_primary_with_own_error_and_borrowed_args() {
    insta::assert_snapshot!(method(
        Kind::ReadOnly,
        quote!(primary),
        quote! {
            async fn by_name<'a>(&self, conn: &mut AsyncPgConnection, name: &'a str, ids: &'a [i64]) -> Result<Vec<User>, AppError> {
                Ok(users::table.filter(users::name.eq(name)).filter(users::id.eq_any(ids)).load(conn).await?)
            }
        },
    ));
}

#[test]
fn write_in_a_transaction() {
    insta::assert_snapshot!(method(
        Kind::Write,
        quote!(),
        quote! {
            pub async fn rename(&self, conn: &mut AsyncPgConnection, id: i64, name: &str) -> diesel::QueryResult<User> {
                diesel::update(users::table.find(id)).set(users::name.eq(name)).get_result(conn).await
            }
        },
    ));
}

#[test]
fn write_scoped_by_an_unnamed_tenant_with_a_destructured_argument() {
    insta::assert_snapshot!(method(
        Kind::Write,
        quote!(),
        quote! {
            async fn shift(&self, conn: &mut AsyncPgConnection, _: &Org, (id, by): (i64, i64)) -> Result<usize, AppError> {
                Ok(diesel::update(users::table.find(id)).set(users::rank.eq(users::rank + by)).execute(conn).await?)
            }
        },
    ));
}

#[test]
fn derive_on_a_struct_with_fields_of_its_own() {
    insta::assert_snapshot!(pretty(
        crate::repo::derive(quote! {
            pub struct Db {
                replicas: diesel_replica::ReplicaSet,
                cache: Cache,
            }
        })
        .unwrap()
    ));
}

#[test]
fn derive_on_a_unit_struct() {
    insta::assert_snapshot!(pretty(
        crate::repo::derive(quote!(
            pub struct Db;
        ))
        .unwrap()
    ));
}
