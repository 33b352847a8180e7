use std::path::PathBuf;

/// What is wrong with an image's source. Every variant names the source
/// (the archive, layout or root directory) and, where there is one, the
/// entry inside it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}`: not an OCI image: {reason}\nhint: write one with `podman save --format oci-archive -o {} IMAGE`", path.display(), path.display())]
    Format { path: PathBuf, reason: String },
    #[error("`{}`: entry `{entry}`: {reason}", path.display())]
    Entry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
