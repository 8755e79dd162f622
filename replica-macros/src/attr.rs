//! Arguments of `#[read_only(...)]` and `#[write(...)]`.

use proc_macro2::TokenStream;
use syn::Token;
use syn::parse::{ParseStream, Parser};

mod kw {
    syn::custom_keyword!(primary);
    syn::custom_keyword!(snapshot);
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
            Self::ReadOnly => &["primary", "snapshot"],
            Self::Write => &[],
        }
    }
}

/// The parsed options.
#[derive(Default)]
pub(crate) struct Args {
    /// `primary`: read on the writer, still `READ ONLY`.
    pub(crate) primary: Option<kw::primary>,
    /// `snapshot`: read on a replica in one `REPEATABLE READ` transaction.
    pub(crate) snapshot: Option<kw::snapshot>,
}

impl Args {
    pub(crate) fn parse(kind: Kind, tokens: TokenStream) -> syn::Result<Self> {
        let parser = |input: ParseStream<'_>| {
            let mut args = Args::default();
            while !input.is_empty() {
                match Opt::parse(kind, input)? {
                    Opt::Primary(token) => {
                        if args.primary.is_some() {
                            return Err(duplicate(token.span, "primary"));
                        }
                        args.primary = Some(token);
                    }
                    Opt::Snapshot(token) => {
                        if args.snapshot.is_some() {
                            return Err(duplicate(token.span, "snapshot"));
                        }
                        args.snapshot = Some(token);
                    }
                }
                if let (Some(_), Some(snapshot)) = (args.primary, args.snapshot) {
                    return Err(syn::Error::new(
                        snapshot.span,
                        "`primary` and `snapshot` cannot be combined\n\n\
                         help: `#[read_only(snapshot)]` reads one snapshot on a replica; \
                         `#[read_only(primary)]` reads the latest writes on the writer, \
                         each statement in a snapshot of its own",
                    ));
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

fn duplicate(span: proc_macro2::Span, option: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!("duplicate option `{option}`\n\nhelp: give each option once"),
    )
}

enum Opt {
    Primary(kw::primary),
    Snapshot(kw::snapshot),
}

impl Opt {
    fn parse(kind: Kind, input: ParseStream<'_>) -> syn::Result<Self> {
        if kind == Kind::ReadOnly && input.peek(kw::primary) {
            return Ok(Self::Primary(input.parse()?));
        }
        if kind == Kind::ReadOnly && input.peek(kw::snapshot) {
            return Ok(Self::Snapshot(input.parse()?));
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
                "help: `#[read_only]` reads on a replica; `#[read_only(snapshot)]` reads one snapshot there; \
                 `#[read_only(primary)]` reads on the writer"
            }
            Kind::Write => "help: write `#[write]`",
        };
        Err(syn::Error::new(
            token.span(),
            format!("unknown option `{token}`, {expected}\n\n{help}"),
        ))
    }
}
