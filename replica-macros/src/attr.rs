//! Arguments of `#[read_only(...)]` and `#[write(...)]`.

use proc_macro2::TokenStream;
use syn::Token;
use syn::parse::{ParseStream, Parser};

mod kw {
    syn::custom_keyword!(primary);
}

/// Which method attribute is being expanded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    ReadOnly,
    Write,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::Write => "write",
        }
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            Self::ReadOnly => &["primary"],
            Self::Write => &[],
        }
    }
}

/// The parsed options.
#[derive(Default)]
pub(crate) struct Args {
    /// `primary`: read on the writer, still `READ ONLY`.
    pub(crate) primary: Option<kw::primary>,
}

impl Args {
    pub(crate) fn parse(kind: Kind, tokens: TokenStream) -> syn::Result<Self> {
        let parser = |input: ParseStream<'_>| {
            let mut args = Args::default();
            while !input.is_empty() {
                match Opt::parse(kind, input)? {
                    Opt::Primary(token) => {
                        if args.primary.is_some() {
                            return Err(syn::Error::new(
                                token.span,
                                "duplicate option `primary`\n\nhelp: give each option once",
                            ));
                        }
                        args.primary = Some(token);
                    }
                }
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            Ok(args)
        };
        parser.parse2(tokens)
    }
}

enum Opt {
    Primary(kw::primary),
}

impl Opt {
    fn parse(kind: Kind, input: ParseStream<'_>) -> syn::Result<Self> {
        if kind == Kind::ReadOnly && input.peek(kw::primary) {
            return Ok(Self::Primary(input.parse()?));
        }
        let token: proc_macro2::TokenTree = input.parse()?;
        let expected = match kind.options() {
            [] => format!("`#[{}]` takes no options", kind.name()),
            options => format!(
                "expected one of {}",
                options
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let help = match kind {
            Kind::ReadOnly => {
                "help: `#[read_only]` reads on a replica; `#[read_only(primary)]` reads on the writer"
            }
            Kind::Write => "help: write `#[write]`",
        };
        Err(syn::Error::new(
            token.span(),
            format!("unknown option `{token}`, {expected}\n\n{help}"),
        ))
    }
}
