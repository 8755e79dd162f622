//! Writes that can be seen in a `#[read_only]` body without type
//! information: diesel's write builders and `sql_query` literals that begin
//! with a writing statement. The `READ ONLY` transaction remains the real
//! guard at run time; this check only catches the obvious at compile time.

use syn::visit::{self, Visit};
use syn::{Expr, ExprCall, ExprLit, Lit};

const WRITE_BUILDERS: [&str; 3] = ["insert_into", "update", "delete"];
const WRITE_STATEMENTS: [&str; 7] = [
    "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRUNCATE",
];

/// Every obvious write in `block`, as one combined error.
pub(crate) fn writes_in(block: &syn::Block) -> syn::Result<()> {
    let mut finder = Finder(None);
    finder.visit_block(block);
    finder.0.map_or(Ok(()), Err)
}

struct Finder(Option<syn::Error>);

impl Finder {
    fn report(&mut self, call: &ExprCall, what: String) {
        let error = syn::Error::new_spanned(
            call,
            format!(
                "{what} writes, but this method is `#[read_only]`: it runs in a READ ONLY \
                 transaction on a replica\n\nhelp: mark the method `#[write]` to run it on the writer"
            ),
        );
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_expr_call(&mut self, call: &'ast ExprCall) {
        if let Expr::Path(func) = &*call.func {
            let segments: Vec<String> = func
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            let last = segments.last().map(String::as_str).unwrap_or_default();
            if segments.len() >= 2 && segments[0] == "diesel" && WRITE_BUILDERS.contains(&last) {
                self.report(call, format!("`diesel::{last}`"));
            } else if last == "sql_query"
                && let Some(Expr::Lit(ExprLit {
                    lit: Lit::Str(sql), ..
                })) = call.args.first()
            {
                let statement = first_word(&sql.value());
                if WRITE_STATEMENTS.contains(&statement.as_str()) {
                    self.report(call, format!("`sql_query(\"{statement} ...\")`"));
                }
            }
        }
        visit::visit_expr_call(self, call);
    }

    // A nested item is not part of this body's run.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// The first word of a statement, upper-cased.
fn first_word(sql: &str) -> String {
    sql.trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase()
}
