"""manage.py import_mvtec <folder-or-zip> --project NAME [--user NAME]: import_dataset for MVTec AD."""

from annotations.management.commands.import_dataset import Command as ImportDataset


class Command(ImportDataset):
    help = "Import an MVTec AD folder (train/good, test/<type>, ground_truth) into a project."
    format = "mvtec"
