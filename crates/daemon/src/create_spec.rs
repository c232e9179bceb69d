//! The spec of a container being created: read from a bundle or made for
//! a root filesystem (off the async workers, with a deadline), or made
//! from an image's config with the request's overrides.

use crate::create::{CreateParams, FromImage, with_deadline};
use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::spec::{self, Overrides};

impl Manager {
    /// Reads and checks the spec off the async workers, with a deadline: a
    /// user-supplied path may sit on a hung filesystem.
    pub(crate) async fn prepare_spec(&self, p: &CreateParams, cgroup: &str) -> Result<spec::Prepared> {
        let (path, id, cgroup, security) = (p.path.clone(), p.id.to_string(), cgroup.to_string(), p.security.clone());
        let (args, env, cwd, tty, tty_size) = (p.args.clone(), p.env.clone(), p.cwd.clone(), p.tty, p.tty_size);
        let work = tokio::task::spawn_blocking(move || {
            let overrides = Overrides { args: &args, env: &env, cwd: &cwd, tty, tty_size };
            spec::prepare(&path, &id, &cgroup, &overrides, &security)
        });
        with_deadline("prepare spec", &format!("reading the spec under {}", p.path), work).await
    }

    /// Resolves the image (it must be present) and builds the spec from its
    /// config; the image's stop signal becomes the stop-signal label unless
    /// the request set one.
    pub(crate) fn prepare_image_spec(
        &self,
        p: &mut CreateParams,
        cgroup: &str,
    ) -> Result<(spec::Prepared, Option<FromImage>)> {
        if !p.path.is_empty() {
            return Err(Error::InvalidArgument("give either a path or an image, not both".into()));
        }
        let (image, mut run) = self.images.resolve(&p.image)?;
        if let Some(entrypoint) = &p.entrypoint {
            run.entrypoint = if entrypoint.is_empty() { Vec::new() } else { vec![entrypoint.clone()] };
            run.cmd.clear();
        }
        if !p.user.is_empty() {
            run.user = p.user.clone();
        }
        let mut ids = berth_images::resolve_user(&self.images.snapshots, &image.chain_id, &run.user)?;
        run.user = format!("{}:{}", ids.uid, ids.gid);
        for g in &p.groups {
            if !ids.additional_gids.contains(g) {
                ids.additional_gids.push(*g);
            }
        }
        let defaults = spec::ImageDefaults {
            entrypoint: &run.entrypoint,
            cmd: &run.cmd,
            env: &run.env,
            working_dir: &run.working_dir,
            user: &run.user,
            additional_gids: &ids.additional_gids,
        };
        let o = Overrides { args: &p.args, env: &p.env, cwd: &p.cwd, tty: p.tty, tty_size: p.tty_size };
        let rootfs = self.image_rootfs(&p.namespace, &p.id);
        let prepared = spec::prepare_image(&rootfs, p.id.as_str(), cgroup, &defaults, &o, &p.security)?;
        if !run.stop_signal.is_empty()
            && !p.labels.contains_key(crate::stop::STOP_SIGNAL_LABEL)
            && berth_model::signal_number(&run.stop_signal).is_some()
        {
            p.labels.insert(crate::stop::STOP_SIGNAL_LABEL.to_string(), run.stop_signal.clone());
        }
        Ok((prepared, Some(FromImage { name: image.name, chain_id: image.chain_id, volumes: Vec::new(), diff: None })))
    }
}
