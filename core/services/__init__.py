"""What the apps call: one service per family (core/services/<family>.py), each with its endpoint table, over the
shared parts in base.py (model cache, request checks, admission) and pictures.py (pictures and output files).

SERVICES lists them in the order the sampler shows their tabs; a new family with a tab adds one line here.
"""
from core.requests import RequestError
from core.services.base import Admission, Endpoint, Service, figures_markdown
from core.services.classifier import AttackService
from core.services.cyclegan import CycleGANService
from core.services.diffusion import DiffusionService
from core.services.flow import FlowService
from core.services.foundations import FoundationsService
from core.services.gan import GANService
from core.services.jem import JEMService
from core.services.likelihood import LikelihoodService
from core.services.pictures import OutputFiles
from core.services.pix2pix import Pix2PixService
from core.services.pixelcnn import PixelCNNService
from core.services.simclr import SimCLRService
from core.services.stylegan import StyleGANService
from core.services.vae import VAEService
from core.services.vqvae import VQVAEService

SERVICES: tuple[type[Service], ...] = (GANService, StyleGANService, VAEService, FlowService, PixelCNNService,
                                       VQVAEService, JEMService, DiffusionService, LikelihoodService,
                                       CycleGANService, Pix2PixService, SimCLRService, AttackService,
                                       FoundationsService)

__all__ = ["SERVICES", "Service", "Endpoint", "Admission", "OutputFiles", "RequestError", "figures_markdown"]
