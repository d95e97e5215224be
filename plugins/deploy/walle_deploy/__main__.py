"""``python -m walle_deploy ...`` runs the deploy commands without the ``walle`` front end
(the fleet simulator starts its server process this way)."""

from walle_deploy.cli import deploy_group

deploy_group(prog_name="python -m walle_deploy")
